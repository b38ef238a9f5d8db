"""PATCH /api/v1/incidents/{id}: transitions, notes, reassignment, all or nothing."""

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from incident_app.patches import UNSET, Patch
from incident_app.service import OPTIMISTIC_ATTEMPTS
from incident_app.tables import incident_events, incidents
from tests.support.incidents import VALID

# Medium: the metrics these tests read are labelled by severity.
MEDIUM = {**VALID, "severity": "medium"}


@pytest.fixture
def incident(create_incident):
    return create_incident(severity="medium")


def patch(client, incident, **body):
    return client.patch(f"/api/v1/incidents/{incident['incident_id']}", json=body)


def sample(app, name, **labels):
    return app.extensions["metrics"].registry.get_sample_value(name, labels) or 0.0


def test_acknowledge_sets_acknowledged_at_and_mtta(client, incident):
    response = patch(client, incident, status="acknowledged")
    assert response.status_code == 200
    acked = response.get_json()
    assert acked["status"] == "acknowledged"
    acknowledged_at = datetime.fromisoformat(acked["acknowledged_at"])
    created_at = datetime.fromisoformat(acked["created_at"])
    assert acked["mtta_seconds"] == pytest.approx((acknowledged_at - created_at).total_seconds(), abs=1e-6)
    assert acked["resolved_at"] is None and acked["mttr_seconds"] is None
    assert acked["updated_at"] == acked["acknowledged_at"]


@pytest.mark.parametrize("path", [["resolved"], ["acknowledged", "resolved"]], ids=["open-resolved", "via-ack"])
def test_resolve_sets_resolved_at_and_mttr(client, incident, path):
    for status in path:
        response = patch(client, incident, status=status)
        assert response.status_code == 200
    resolved = response.get_json()
    assert resolved["status"] == "resolved"
    mttr = (datetime.fromisoformat(resolved["resolved_at"]) - datetime.fromisoformat(resolved["created_at"]))
    assert resolved["mttr_seconds"] == pytest.approx(mttr.total_seconds(), abs=1e-6)
    assert (resolved["acknowledged_at"] is None) == (path == ["resolved"])


def test_second_acknowledge_keeps_first_acknowledged_at(client, incident):
    first = patch(client, incident, status="acknowledged").get_json()
    again = patch(client, incident, status="acknowledged")
    assert again.status_code == 200
    assert again.get_json()["acknowledged_at"] == first["acknowledged_at"]
    assert again.get_json()["updated_at"] == first["updated_at"]


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        (["acknowledged"], "open"),
        (["resolved"], "open"),
        (["resolved"], "acknowledged"),
        (["acknowledged", "resolved"], "acknowledged"),
    ],
)
def test_invalid_transition_is_400_naming_both_statuses(client, incident, path, refused):
    for status in path:
        patch(client, incident, status=status)
    response = patch(client, incident, status=refused)
    assert response.status_code == 400
    message = response.get_json()["message"]
    assert path[-1] in message and refused in message
    assert client.get(f"/api/v1/incidents/{incident['incident_id']}").get_json()["status"] == path[-1]


def test_transition_metrics_are_observed_once_per_incident(app, client, incident):
    mtta_before = sample(app, "incident_mtta_seconds_count", severity="medium")
    mttr_before = sample(app, "incident_mttr_seconds_count", severity="medium")
    acked_before = sample(app, "incidents_total", status="acknowledged", severity="medium")
    for _ in range(3):
        patch(client, incident, status="acknowledged")
    for _ in range(2):
        patch(client, incident, status="resolved")
    assert sample(app, "incident_mtta_seconds_count", severity="medium") == mtta_before + 1
    assert sample(app, "incident_mttr_seconds_count", severity="medium") == mttr_before + 1
    assert sample(app, "incidents_total", status="acknowledged", severity="medium") == acked_before + 1
    assert sample(app, "incidents_total", status="resolved", severity="medium") >= 1


def test_backdated_acknowledge_observes_the_real_mtta(app, client, clock):
    created = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    clock.set(created)
    incident = client.post("/api/v1/incidents", json=MEDIUM).get_json()
    clock.set(created + timedelta(seconds=95.5))
    acked = patch(client, incident, status="acknowledged").get_json()
    assert acked["mtta_seconds"] == 95.5
    assert acked["acknowledged_at"] == "2026-11-26T10:01:35.500000+00:00"
    assert sample(app, "incident_mtta_seconds_bucket", severity="medium", le="60.0") == 0
    assert sample(app, "incident_mtta_seconds_bucket", severity="medium", le="120.0") == 1


def test_note_is_appended_with_author_and_time(client, incident):
    first = patch(client, incident, note="rolled back", author="bob").get_json()
    second = patch(client, incident, note="  watching  ").get_json()
    assert [n["content"] for n in second["notes"]] == ["rolled back", "watching"]
    assert second["notes"][0]["author"] == "bob" and second["notes"][1]["author"] is None
    assert second["notes"][0] == first["notes"][0]
    assert len({str(uuid.UUID(n["id"])) for n in second["notes"]}) == 2
    assert datetime.fromisoformat(first["notes"][0]["created_at"]).tzinfo is not None
    assert second["status"] == "open"


def test_notes_can_be_added_after_resolution(client, incident):
    patch(client, incident, status="resolved")
    response = patch(client, incident, note="postmortem scheduled")
    assert response.status_code == 200 and len(response.get_json()["notes"]) == 1


def test_reassign_and_unassign(client, incident):
    assert incident["assigned_to"] == "alice@example.com"
    assert patch(client, incident, assigned_to="carol@example.com").get_json()["assigned_to"] == "carol@example.com"
    assert patch(client, incident, assigned_to=None).get_json()["assigned_to"] is None


def test_fields_apply_together(client, incident):
    updated = patch(client, incident, status="acknowledged", assigned_to="dave", note="on it", author="dave").get_json()
    assert updated["status"] == "acknowledged"
    assert updated["assigned_to"] == "dave"
    assert updated["notes"][0]["content"] == "on it"


def test_refused_transition_applies_nothing(client, incident):
    patch(client, incident, status="resolved")
    response = patch(client, incident, status="open", assigned_to="eve", note="reopen please")
    assert response.status_code == 400
    unchanged = client.get(f"/api/v1/incidents/{incident['incident_id']}").get_json()
    assert unchanged["assigned_to"] == "alice@example.com"
    assert unchanged["notes"] == []


def test_same_status_with_a_note_adds_the_note(client, incident):
    patch(client, incident, status="acknowledged")
    response = patch(client, incident, status="acknowledged", note="still on it")
    assert response.status_code == 200
    assert [n["content"] for n in response.get_json()["notes"]] == ["still on it"]


def test_patch_response_includes_alerts(client):
    alert = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    incident = client.post("/api/v1/incidents", json={**VALID, "alert_ids": [alert]}).get_json()
    updated = patch(client, incident, note="x").get_json()
    assert [a["alert_id"] for a in updated["alerts"]] == [alert]


# --------------------------------------------------------------------------- a write that lost a race


def clock_writing_first(app, incident, notes: int):
    """A service clock that, the first `notes` times the service reads it (after reading the
    incident, before writing), has another writer append a note: the service's write then finds the
    incident changed since it read it."""
    written = []
    engine = app.extensions["engine"]

    def clock():
        if len(written) < notes:
            written.append(f"meanwhile {len(written)}")
            mine = incidents.c.incident_id == incident["incident_id"]
            with engine.begin() as conn:
                notes_now = conn.execute(sa.select(incidents.c.notes).where(mine)).scalar_one()
                conn.execute(incidents.update().where(mine).values(notes=[*notes_now, {"content": written[-1]}]))
        return datetime.now(UTC)

    return clock, written


@pytest.mark.parametrize("races_lost", [1, OPTIMISTIC_ATTEMPTS])
def test_a_write_that_lost_a_race_reads_again_and_loses_nothing(app, client, incident, races_lost):
    """Lost once: read again and written. Lost every optimistic attempt: the row is locked instead."""
    app.extensions["incident_service"].clock, written = clock_writing_first(app, incident, races_lost)
    response = patch(client, incident, status="acknowledged", note="mine")
    assert response.status_code == 200
    assert [n["content"] for n in response.get_json()["notes"]] == [*written, "mine"]
    assert response.get_json()["status"] == "acknowledged"
    events = client.get(f"/api/v1/incidents/{incident['incident_id']}/events").get_json()["events"]
    assert [e["type"] for e in events].count("acknowledged") == 1
    assert [e["type"] for e in events].count("note_added") == 1


def test_a_transition_made_meanwhile_is_not_made_twice(app, client, incident):
    """Read as open; acknowledged by another request before the write: the write must not apply."""
    engine = app.extensions["engine"]
    first = []

    def clock():
        if not first:
            first.append(None)  # the other request reads the clock too
            first[0] = patch(app.test_client(), incident, status="acknowledged").get_json()
        return datetime.now(UTC)

    app.extensions["incident_service"].clock = clock
    response = patch(client, incident, status="acknowledged")
    assert response.status_code == 200
    assert response.get_json()["acknowledged_at"] == first[0]["acknowledged_at"]
    with engine.connect() as conn:
        kinds = conn.execute(sa.select(incident_events.c.type).where(
            incident_events.c.incident_id == sa.select(incidents.c.id).where(
                incidents.c.incident_id == incident["incident_id"]).scalar_subquery())).scalars().all()
    assert kinds.count("acknowledged") == 1


def test_the_acknowledge_written_without_a_read_is_what_plan_works_out_for_any_open_incident():
    """PostgreSQL writes an acknowledge alone in one statement, without reading the incident
    (Store.acknowledge_open): that is right only while what `plan` works out for it depends on
    nothing of the incident but its status, which the statement checks."""
    now = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    request = Patch("acknowledged", UNSET, None, "bob")
    blind = request.acknowledged(now)
    for assigned_to, notes in ((None, []), ("alice", [{"id": "n", "content": "c", "author": None}])):
        row = SimpleNamespace(id=uuid.uuid4(), status="open", assigned_to=assigned_to, notes=notes)
        planned = request.plan(row, now)
        assert (planned.values, planned.transition, planned.at, planned.note) == (
            blind.values, blind.transition, blind.at, blind.note)
        assert [{**event, "incident_id": None} for event in planned.timeline] == blind.timeline
    assert [event["type"] for event in blind.timeline] == ["acknowledged"]

"""Each event carries its incident as it stood after the change (contract 7, "The event"), on every
path that writes one, on both databases: stored with the event by the statement that writes it
(migration 0010), replayed as it was by the stream and sent as it was by the webhooks, however the
incident changed afterwards."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from incident_app import documents
from incident_app.repository.items import item_json
from incident_app.tables import incident_events, incidents
from tests.support.incidents import URL, VALID
from tests.test_escalation import escalate
from tests.test_stream import follow
from tests.test_webhooks import RECEIVE, later, receiver, sender, subscribe, verified  # noqa: F401 (fixtures)

T0 = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
NOTIFY = "/api/v1/notify"


def item(client, incident_id: str) -> dict:
    """The incident as a list item (contract 2: every field but `alerts` and `alert_ids`), as it stands."""
    document = client.get(f"{URL}/{incident_id}").get_json()
    return {name: value for name, value in document.items() if name not in ("alerts", "alert_ids")}


class Timeline:
    """The events of one incident as stored, each with the incident it carries, taken step by step."""

    def __init__(self, app, incident_id: str) -> None:
        self.engine = app.extensions["engine"]
        self.incident_id = incident_id
        self.seen = 0

    def new(self) -> dict[str, dict | None]:
        """The events written since the last call, by type, each with its stored incident."""
        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.select(incident_events.c.type, incident_events.c.incident)
                .join_from(incident_events, incidents, incidents.c.id == incident_events.c.incident_id)
                .where(incidents.c.incident_id == self.incident_id)
                .order_by(incident_events.c.id)
            ).all()
        new, self.seen = stored[self.seen:], len(stored)
        assert len({row.type for row in new}) == len(new), [row.type for row in new]
        return {row.type: None if row.incident is None else json.loads(row.incident) for row in new}


def without(document: dict, *names: str) -> dict:
    return {name: value for name, value in document.items() if name not in names}


def test_every_change_stores_its_events_with_the_incident_it_left(app, client, notifier):
    """Create (with alerts), a grouped create that raises the severity, acknowledge, a note, alerts
    linked, a reassignment and resolve: each event's incident is the list item as it stood just
    after the event's change."""
    alert = str(uuid.uuid4())
    created = client.post(URL, json={**VALID, "severity": "medium", "dedup_key": "disk/full", "alert_ids": [alert]})
    assert created.status_code == 201
    incident_id = created.get_json()["incident_id"]
    timeline = Timeline(app, incident_id)
    events, now = timeline.new(), item(client, incident_id)
    assert sorted(events) == ["alerts_linked", "assigned", "created", "notified"]
    # The create's own transaction wrote the incident before anyone was assigned.
    assert events["created"] == events["alerts_linked"]
    assert events["created"]["assigned_to"] is None and now["assigned_to"] == "alice@example.com"
    assert without(events["created"], "assigned_to", "updated_at") == without(now, "assigned_to", "updated_at")
    assert events["assigned"] == events["notified"] == now

    grouped = client.post(URL, json={**VALID, "severity": "critical", "dedup_key": "disk/full"})
    assert grouped.status_code == 200
    assert len(notifier.wait_for(NOTIFY, 2)) == 2
    events, now = timeline.new(), item(client, incident_id)
    assert sorted(events) == ["alert_grouped", "notified", "severity_raised"]
    assert events["alert_grouped"]["severity"] == "medium" and events["alert_grouped"]["grouped_count"] == 1
    assert events["severity_raised"] == events["notified"] == now and now["severity"] == "critical"

    for path, body, expected in [
        ("", {"status": "acknowledged"}, ["acknowledged"]),  # PostgreSQL: the one-statement acknowledge
        ("", {"note": "rolled back", "author": "bob"}, ["note_added"]),
        ("/alerts", {"alert_ids": [str(uuid.uuid4())]}, ["alerts_linked"]),
        ("", {"assigned_to": "carol@example.com"}, ["reassigned"]),
        ("", {"status": "resolved", "note": "fixed"}, ["note_added", "resolved"]),
    ]:
        send = client.post if path else client.patch
        response = send(f"{URL}/{incident_id}{path}", json=body)
        assert response.status_code in (200, 201), response.get_json()
        events, now = timeline.new(), item(client, incident_id)
        assert sorted(events) == expected, body
        for event_type in expected:
            assert events[event_type] == now, (body, event_type)
    assert now["status"] == "resolved" and len(now["notes"]) == 2


def test_escalation_and_a_failed_notification_store_the_incident_they_left(app, client, notifier, create_incident):
    notifier.respond(503, {"error": "down"})
    incident_id = create_incident()["incident_id"]
    timeline = Timeline(app, incident_id)
    events = timeline.new()
    assert events["notification_failed"] == item(client, incident_id)
    notifier.respond(200, {"status": "sent"})
    assert escalate(app, minutes_from_now=6) == 1
    events, now = timeline.new(), item(client, incident_id)
    assert {"escalated", "note_added"} <= set(events) and now["escalation_level"] == 1
    assert events["escalated"] == events["note_added"] == now


def test_the_stream_replays_each_event_with_the_incident_as_it_was(client):
    marker = follow(client, "?types=created")
    client.post(URL, json={**VALID, "title": "marker"})
    (mark,) = marker.until(1)
    marker.close()
    incident_id = client.post(URL, json=VALID).get_json()["incident_id"]
    for status in ("acknowledged", "resolved"):
        assert client.patch(f"{URL}/{incident_id}", json={"status": status}).status_code == 200
    replay = follow(client, f"?types=created,acknowledged,resolved&after={mark['id']}")
    try:
        events = replay.until(3)
    finally:
        replay.close()
    assert [e["data"]["incident"]["status"] for e in events] == ["open", "acknowledged", "resolved"]
    assert events[0]["data"]["incident"]["acknowledged_at"] is None
    assert events[-1]["data"]["incident"] == item(client, incident_id)


def test_a_webhook_sends_the_incident_as_the_event_left_it(app, client, subscribe, receiver, create_incident):
    webhook = subscribe(types=["created"])
    incident = create_incident()
    assert client.patch(f"{URL}/{incident['incident_id']}", json={"status": "resolved"}).status_code == 200
    assert sender(app).deliver_due(now=later(app, 1)) == 1  # delivered after the resolve
    (recorded,) = receiver.requests_to(RECEIVE)
    sent = verified(webhook, recorded)["incident"]
    assert sent["status"] == "open" and sent["resolved_at"] is None and sent["assigned_to"] is None


def test_an_event_written_without_its_incident_shows_the_incident_as_it_stands(app, client):
    """Events from before migration 0010, or written by hand, have no stored incident."""
    marker = follow(client, "?types=escalated")
    incident_id = client.post(URL, json=VALID).get_json()["incident_id"]
    with app.extensions["engine"].begin() as conn:
        pk = conn.execute(sa.select(incidents.c.id).where(incidents.c.incident_id == incident_id)).scalar_one()
        conn.execute(incident_events.insert().values(incident_id=pk, type="escalated", actor="operator",
                                                     details={"level": 1}, created_at=T0))
    try:
        (event,) = marker.until(1)
    finally:
        marker.close()
    assert event["data"]["incident"] == item(client, incident_id)


def test_the_item_the_database_writes_is_the_list_items_json(app, client, create_incident, clock):
    """items.item_json, on both databases, against documents.summary_json: nulls, escapes, notes,
    durations with microseconds (and whole ones), escalation and grouping fields."""
    clock.set(T0)
    create_incident(title='Quotes " and \\ backslash\nnew line \x01 ünïcode ✓', description=None, dedup_key="k/1")
    timed = create_incident(description="d")
    clock.set(T0 + timedelta(hours=1, minutes=2, seconds=3, microseconds=654321))
    client.patch(f"{URL}/{timed['incident_id']}", json={"status": "acknowledged", "note": "ünïcode ✓ \"q\""})
    clock.set(T0 + timedelta(days=2, microseconds=1))
    client.patch(f"{URL}/{timed['incident_id']}", json={"status": "resolved"})
    clock.set(T0 + timedelta(days=3))
    whole = create_incident()
    clock.set(T0 + timedelta(days=3, seconds=7))
    client.patch(f"{URL}/{whole['incident_id']}", json={"status": "resolved"})
    with app.extensions["engine"].connect() as conn:
        rows = conn.execute(sa.select(incidents, item_json(incidents).label("item_json"))).all()
    assert len(rows) == 3
    for row in rows:
        assert json.loads(row.item_json) == documents.summary_json(documents.incident_document(row))
    written = {row.incident_id: json.loads(row.item_json) for row in rows}
    assert (written[timed["incident_id"]]["mtta_seconds"], written[timed["incident_id"]]["mttr_seconds"]) == (
        3723.654321, 172800.000001)
    assert written[whole["incident_id"]]["mttr_seconds"] == 7.0


def test_filters_match_the_incident_as_each_event_left_it(client):
    follower = follow(client, "?severity=critical")
    try:
        created = client.post(URL, json={**VALID, "severity": "medium", "dedup_key": "disk/raised"})
        raised = client.post(URL, json={**VALID, "severity": "critical", "dedup_key": "disk/raised"})
        assert (created.status_code, raised.status_code) == (201, 200)
        client.patch(f"{URL}/{created.get_json()['incident_id']}", json={"status": "acknowledged"})
        events = follower.until(3)  # severity_raised, its notified, acknowledged: the incident critical
    finally:
        follower.close()
    assert [e["event"] for e in events] == ["severity_raised", "notified", "acknowledged"]
    assert {e["data"]["incident"]["severity"] for e in events} == {"critical"}

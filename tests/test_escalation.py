"""Escalation of incidents left open: secondary assigned, system note, notification, metric,
escalation_level/escalated_at; at most 3 levels, each exactly once; never once acknowledged."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from incident_app import migrate
from incident_app.settings import Settings
from tests.support.reliability import wait_until

NOTIFY = "/api/v1/notify"


def escalate(app, *, minutes_from_now: float) -> int:
    now = app.extensions["incident_service"].clock() + timedelta(minutes=minutes_from_now)
    return app.extensions["background"].escalator.escalate_due(now=now)


def escalations(app, severity="high"):
    return app.extensions["metrics"].registry.get_sample_value(
        "incident_escalations_total", {"severity": severity}) or 0.0


def test_open_incident_is_escalated_to_the_secondary_after_the_timeout(app, client, notifier, create_incident):
    incident_id = create_incident()["incident_id"]
    before = escalations(app)
    assert escalate(app, minutes_from_now=4.9) == 0, "not before ESCALATION_TIMEOUT_MINUTES (5)"
    assert escalate(app, minutes_from_now=5.1) == 1

    incident = client.get(f"/api/v1/incidents/{incident_id}").get_json()
    assert incident["escalation_level"] == 1
    assert incident["escalated_at"] is not None
    assert incident["assigned_to"] == "bob@example.com"
    assert incident["status"] == "open"
    (note,) = incident["notes"]
    assert note["author"] == "system" and "level 1" in note["content"]
    assert escalations(app) == before + 1

    notified = notifier.requests_to(NOTIFY)
    assert len(notified) == 2 and notified[-1].body["engineer"] == "bob@example.com"
    assert notified[-1].body["notification_id"] != notified[0].body["notification_id"]

    events = client.get(f"/api/v1/incidents/{incident_id}/events").get_json()["events"]
    assert [e["type"] for e in events][3:] == ["escalated", "reassigned", "note_added", "notified"]
    assert events[3]["actor"] == "system" and events[3]["details"]["level"] == 1
    assert events[5]["details"] == note  # the system note, as the incident keeps it


def test_each_level_waits_a_timeout_after_the_previous_and_stops_at_three(app, client, notifier, create_incident):
    incident_id = create_incident()["incident_id"]
    assert escalate(app, minutes_from_now=5.1) == 1
    assert escalate(app, minutes_from_now=5.2) == 0, "the next level waits a timeout after the last escalation"
    assert escalate(app, minutes_from_now=10.5) == 1
    assert escalate(app, minutes_from_now=16) == 1
    assert escalate(app, minutes_from_now=60) == 0, "at most 3 levels"
    incident = client.get(f"/api/v1/incidents/{incident_id}").get_json()
    assert incident["escalation_level"] == 3
    assert len(notifier.requests_to(NOTIFY)) == 4


@pytest.mark.parametrize("status", ["acknowledged", "resolved"])
def test_acknowledged_or_resolved_incident_is_never_escalated(app, client, status, create_incident):
    incident_id = create_incident()["incident_id"]
    client.patch(f"/api/v1/incidents/{incident_id}", json={"status": status})
    assert escalate(app, minutes_from_now=60) == 0
    assert client.get(f"/api/v1/incidents/{incident_id}").get_json()["escalation_level"] == 0


def test_without_secondary_the_assignee_stays_and_is_notified_again(app, client, oncall, notifier, create_incident):
    oncall.respond(200, {"primary": {"email": "alice@example.com"}})
    incident_id = create_incident()["incident_id"]
    assert escalate(app, minutes_from_now=6) == 1
    incident = client.get(f"/api/v1/incidents/{incident_id}").get_json()
    assert incident["assigned_to"] == "alice@example.com"
    assert [r.body["engineer"] for r in notifier.requests_to(NOTIFY)] == ["alice@example.com"] * 2
    events = client.get(f"/api/v1/incidents/{incident_id}/events").get_json()["events"]
    assert "reassigned" not in [e["type"] for e in events]


def test_dead_oncall_service_still_escalates_and_notifies(make_app, notifier, create_incident):
    from tests.support.peers import closed_port_url

    app = make_app(oncall_service_url=closed_port_url())
    client = app.test_client()
    incident_id = create_incident(via=client)["incident_id"]
    assert escalate(app, minutes_from_now=6) == 1
    assert client.get(f"/api/v1/incidents/{incident_id}").get_json()["escalation_level"] == 1
    assert notifier.requests_to(NOTIFY)[-1].body["engineer"] == "storage"  # unassigned: the service name


def test_concurrent_checkers_escalate_each_level_once(app, client, notifier, create_incident):
    incident_ids = [create_incident()["incident_id"] for _ in range(5)]
    before = escalations(app)
    now = app.extensions["incident_service"].clock() + timedelta(minutes=6)
    escalator = app.extensions["background"].escalator
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(escalator.escalate_due(now=now))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 5
    assert escalations(app) == before + 5
    for incident_id in incident_ids:
        assert client.get(f"/api/v1/incidents/{incident_id}").get_json()["escalation_level"] == 1
    assert len(notifier.requests_to(NOTIFY)) == 5 + 5


@pytest.fixture
def own_database(backend, pg_database, sqlite_database):
    url = pg_database() if backend == "postgresql" else sqlite_database()
    migrate.upgrade(Settings(database_url=url))
    return url


def test_fractional_timeout_escalates_through_the_background_loop(make_app, own_database, create_incident):
    # 0.02 minutes is 1.2 seconds; the check runs every 0.3 seconds.
    app = make_app(database_url=own_database, escalation_timeout_minutes=0.02, escalation_check_seconds=0.3)
    client = app.test_client()
    incident_id = create_incident(via=client)["incident_id"]
    background = app.extensions["background"].start()
    try:
        level = wait_until(
            lambda: client.get(f"/api/v1/incidents/{incident_id}").get_json()["escalation_level"] == 3, timeout=15
        )
    finally:
        background.stop()
    assert level
    events = client.get(f"/api/v1/incidents/{incident_id}/events").get_json()["events"]
    assert [e["details"]["level"] for e in events if e["type"] == "escalated"] == [1, 2, 3]

"""GET /api/v1/incidents/{incident_id}/events: what happened, oldest first, each event written in
the transaction of the change it records."""

from __future__ import annotations

from datetime import datetime

from tests.support.incidents import VALID

ALERT = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def timeline(client, incident_id):
    response = client.get(f"/api/v1/incidents/{incident_id}/events")
    assert response.status_code == 200
    return response.get_json()["events"]


def types(client, incident_id):
    return [event["type"] for event in timeline(client, incident_id)]


def test_create_records_created_assigned_and_notified(client, create_incident):
    incident_id = create_incident()["incident_id"]
    events = timeline(client, incident_id)
    assert [e["type"] for e in events] == ["created", "assigned", "notified"]
    assert events[0]["details"] == VALID
    assert events[1]["details"] == {"assigned_to": "alice@example.com"}
    assert events[2]["details"]["engineer"] == "alice@example.com"
    assert set(events[0]) == {"type", "created_at", "actor", "details"}


def test_failed_notification_is_on_the_timeline(client, notifier, create_incident):
    notifier.respond(503, {})
    incident_id = create_incident()["incident_id"]
    assert types(client, incident_id)[-1] == "notification_failed"


def test_alerts_given_at_creation_are_recorded(client, create_incident):
    incident_id = create_incident(alert_ids=[ALERT])["incident_id"]
    events = timeline(client, incident_id)
    (linked,) = [e for e in events if e["type"] == "alerts_linked"]
    assert linked["details"] == {"alert_ids": [ALERT]}


def test_patch_records_acknowledged_note_reassigned_and_resolved_with_actor(client, create_incident):
    incident_id = create_incident()["incident_id"]
    url = f"/api/v1/incidents/{incident_id}"
    client.patch(url, json={"status": "acknowledged", "author": "bob", "note": "looking"})
    client.patch(url, json={"assigned_to": "carol@example.com"})
    client.patch(url, json={"status": "resolved"})
    events = timeline(client, incident_id)
    assert [e["type"] for e in events][3:] == ["acknowledged", "note_added", "reassigned", "resolved"]
    ack, note, reassigned, resolved = events[3:]
    assert ack["actor"] == "bob" and note["actor"] == "bob"
    # The note_added event carries the note as the incident keeps it.
    (stored,) = client.get(url).get_json()["notes"]
    assert note["details"] == stored and stored["content"] == "looking"
    assert reassigned["details"] == {"from": "alice@example.com", "to": "carol@example.com"}
    assert resolved["details"] == {"from": "acknowledged"} and resolved["actor"] is None


def test_events_are_oldest_first_with_utc_times(client, create_incident):
    incident_id = create_incident()["incident_id"]
    client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "resolved"})
    times = [datetime.fromisoformat(e["created_at"]) for e in timeline(client, incident_id)]
    assert times == sorted(times)
    assert all(t.utcoffset().total_seconds() == 0 for t in times)


def test_a_retried_status_adds_no_event(client, create_incident):
    incident_id = create_incident()["incident_id"]
    url = f"/api/v1/incidents/{incident_id}"
    client.patch(url, json={"status": "acknowledged"})
    client.patch(url, json={"status": "acknowledged"})
    assert types(client, incident_id).count("acknowledged") == 1


def test_a_refused_patch_writes_nothing(client, create_incident):
    incident_id = create_incident()["incident_id"]
    url = f"/api/v1/incidents/{incident_id}"
    client.patch(url, json={"status": "resolved"})
    before = types(client, incident_id)
    # The note would apply, but the transition is refused: the whole PATCH is undone, events too.
    assert client.patch(url, json={"status": "open", "note": "reopen"}).status_code == 400
    assert types(client, incident_id) == before


def test_timeline_is_in_the_openapi_document(client):
    spec = client.get("/openapi.json").get_json()
    get = spec["paths"]["/api/v1/incidents/{incident_id}/events"]["get"]
    assert {"200", "404"} <= set(get["responses"])

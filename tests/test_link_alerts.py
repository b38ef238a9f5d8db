"""POST /api/v1/incidents/{incident_id}/alerts links more alerts; linking one twice is a no-op."""

from __future__ import annotations

import uuid

VALID = {"title": "Latency", "service": "search", "severity": "medium"}


def new_incident(client, **changes):
    response = client.post("/api/v1/incidents", json={**VALID, **changes})
    assert response.status_code == 201
    return response.get_json()


def link(client, incident_id, alert_ids):
    return client.post(f"/api/v1/incidents/{incident_id}/alerts", json={"alert_ids": alert_ids})


def test_linking_adds_alerts_oldest_first(client):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    incident = new_incident(client, alert_ids=[first])
    response = link(client, incident["incident_id"], [second])
    assert response.status_code == 200
    assert [a["alert_id"] for a in response.get_json()["alerts"]] == [first, second]
    stored = client.get(f"/api/v1/incidents/{incident['incident_id']}").get_json()
    assert [a["alert_id"] for a in stored["alerts"]] == [first, second]


def test_linking_twice_is_a_no_op(client):
    alert = str(uuid.uuid4())
    incident_id = new_incident(client)["incident_id"]
    once = link(client, incident_id, [alert]).get_json()
    twice = link(client, incident_id, [alert, alert]).get_json()
    assert twice["alerts"] == once["alerts"]
    assert twice["updated_at"] == once["updated_at"]
    events = client.get(f"/api/v1/incidents/{incident_id}/events").get_json()["events"]
    assert [e["type"] for e in events].count("alerts_linked") == 1


def test_only_new_alerts_are_recorded_on_the_timeline(client):
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    incident_id = new_incident(client, alert_ids=[old])["incident_id"]
    link(client, incident_id, [old, new])
    events = client.get(f"/api/v1/incidents/{incident_id}/events").get_json()["events"]
    assert [e["details"]["alert_ids"] for e in events if e["type"] == "alerts_linked"] == [[old], [new]]


def test_unknown_incident_is_404(client):
    assert link(client, "inc-0000000000000000", [str(uuid.uuid4())]).status_code == 404


def test_bad_bodies_are_422_naming_the_field(client):
    incident_id = new_incident(client)["incident_id"]
    url = f"/api/v1/incidents/{incident_id}/alerts"
    for body in ({}, {"alert_ids": []}, {"alert_ids": ["not-a-uuid"]}, {"alert_ids": "x"},
                 {"alert_ids": [str(uuid.uuid4()) for _ in range(101)]},
                 {"alert_ids": [str(uuid.uuid4())], "extra": 1}):
        response = client.post(url, json=body)
        assert response.status_code == 422, body
        assert set(response.get_json()["errors"]) <= {"alert_ids", "extra"}

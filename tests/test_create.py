"""POST /api/v1/incidents: storage, on-call assignment and notification, with peers that behave
and peers that do not."""

import re
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest

from tests.support.peers import closed_port_url

ONCALL_PATH = "/api/v1/oncall/current"
NOTIFY_PATH = "/api/v1/notify"
RFC3339_UTC_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def new_incident(client, **fields):
    body = {"title": "Payment API error rate above 5%", "service": "payment-api", "severity": "critical", **fields}
    return client.post("/api/v1/incidents", json=body)


def test_create_stores_an_open_incident_and_answers_201_with_location(client):
    response = new_incident(client, description="5xx on /charge")
    assert response.status_code == 201
    incident = response.get_json()
    assert re.fullmatch(r"inc-[0-9a-f]{16}", incident["incident_id"])
    uuid.UUID(incident["id"])
    assert response.headers["Location"] == f"/api/v1/incidents/{incident['incident_id']}"
    assert incident["status"] == "open"
    assert incident["title"] == "Payment API error rate above 5%"
    assert incident["description"] == "5xx on /charge"
    assert incident["notes"] == [] and incident["alerts"] == [] and incident["alert_ids"] == []
    assert incident["acknowledged_at"] is None and incident["resolved_at"] is None
    assert incident["mtta_seconds"] is None and incident["mttr_seconds"] is None
    for field in ("created_at", "updated_at"):
        assert RFC3339_UTC_MICROS.fullmatch(incident[field]), incident[field]
    assert client.get(response.headers["Location"]).get_json() == incident


def test_create_response_has_exactly_the_contract_fields(client):
    incident = new_incident(client).get_json()
    assert set(incident) == {
        "id", "incident_id", "title", "description", "service", "severity", "status", "assigned_to", "notes",
        "alerts", "alert_ids", "created_at", "acknowledged_at", "resolved_at", "updated_at", "mtta_seconds",
        "mttr_seconds", "escalation_level", "escalated_at", "dedup_key", "grouped_count", "last_grouped_at",
    }


def test_title_and_service_are_trimmed(client, oncall):
    incident = new_incident(client, title="  Disk full  ", service=" billing ").get_json()
    assert incident["title"] == "Disk full" and incident["service"] == "billing"
    assert oncall.requests_to(ONCALL_PATH)[-1].query == {"team": ["billing"]}


def test_ids_are_unique_across_creates(client):
    ids = {new_incident(client).get_json()["incident_id"] for _ in range(20)}
    assert len(ids) == 20


def test_incident_id_collision_is_retried_not_a_500(client, monkeypatch):
    from incident_app import flows

    first = new_incident(client).get_json()["incident_id"]
    issued = iter([first, first, "inc-00000000000000ab"])
    monkeypatch.setattr(flows, "new_incident_id", lambda: next(issued))
    response = new_incident(client)
    assert response.status_code == 201
    assert response.get_json()["incident_id"] == "inc-00000000000000ab"


def test_alert_ids_are_linked_with_duplicates_collapsed(client):
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    incident = new_incident(client, alert_ids=[a, b, a]).get_json()
    assert sorted(alert["alert_id"] for alert in incident["alerts"]) == sorted([a, b])
    assert all(RFC3339_UTC_MICROS.fullmatch(alert["linked_at"]) for alert in incident["alerts"])


def test_each_alert_links_to_the_alert_ingestion_service(make_app):
    client = make_app(alert_service_url="https://alerts.example.com").test_client()
    alert = str(uuid.uuid4())
    (linked,) = new_incident(client, alert_ids=[alert]).get_json()["alerts"]
    assert linked["url"] == f"https://alerts.example.com/api/v1/alerts/{alert}"


# --------------------------------------------------------------------------- on-call


def test_primary_email_becomes_the_assignee(client, oncall):
    incident = new_incident(client, service="checkout").get_json()
    assert incident["assigned_to"] == "alice@example.com"
    (lookup,) = oncall.requests_to(ONCALL_PATH)
    assert lookup.method == "GET" and lookup.query == {"team": ["checkout"]}


def test_primary_name_is_used_when_there_is_no_email(client, oncall):
    oncall.respond(200, {"primary": {"name": "Alice Liddell"}})
    assert new_incident(client).get_json()["assigned_to"] == "Alice Liddell"


@pytest.mark.parametrize(
    "reply",
    [
        {"status": 404, "json_body": {"detail": "no schedule"}},
        {"status": 500, "json_body": {"error": "boom"}},
        {"status": 200, "raw": b"<html>not json</html>"},
        {"status": 200, "json_body": {"team": "payment-api"}},  # 200 without primary
        {"status": 200, "json_body": {"primary": None}},
        {"status": 200, "raw": b"[1, 2, 3]"},
    ],
    ids=["404", "500", "invalid-json", "no-primary", "null-primary", "json-array"],
)
def test_unhelpful_oncall_reply_leaves_incident_unassigned(client, oncall, notifier, reply):
    oncall.respond(**reply)
    response = new_incident(client)
    assert response.status_code == 201
    assert response.get_json()["assigned_to"] is None
    (notification,) = notifier.requests_to(NOTIFY_PATH)
    assert notification.body["engineer"] == "payment-api"  # the service name when unassigned


def test_slow_oncall_is_bounded_by_the_client_timeout(make_app, oncall, notifier):
    oncall.respond(200, {"primary": {"email": "late@example.com"}}, delay=3.0)
    client = make_app(http_client_timeout=0.5).test_client()
    started = time.monotonic()
    response = new_incident(client)
    elapsed = time.monotonic() - started
    assert response.status_code == 201
    assert response.get_json()["assigned_to"] is None
    assert elapsed < 2.0, f"create took {elapsed:.2f}s with a 0.5s timeout"


def test_refused_oncall_connection_leaves_incident_unassigned(make_app, notifier):
    client = make_app(oncall_service_url=closed_port_url()).test_client()
    response = new_incident(client)
    assert response.status_code == 201
    assert response.get_json()["assigned_to"] is None
    assert len(notifier.requests_to(NOTIFY_PATH)) == 1


def test_incident_is_stored_before_the_oncall_lookup_answers(client, oncall):
    oncall.respond(200, {"primary": {"email": "slow@example.com"}}, delay=1.0)
    answer = {}
    creating = threading.Thread(target=lambda: answer.update(response=new_incident(client, service="slowteam")))
    creating.start()
    deadline = time.monotonic() + 5
    listed = []
    while not listed and time.monotonic() < deadline and creating.is_alive():
        listed = client.get("/api/v1/incidents?service=slowteam").get_json()["incidents"]
        time.sleep(0.02)
    creating.join()
    assert listed, "the incident should be listed while the on-call lookup is still running"
    assert listed[0]["assigned_to"] is None
    assert answer["response"].get_json()["assigned_to"] == "slow@example.com"


def test_page_survives_a_creator_that_dies_before_the_lookup(app, notifier):
    """The incident's first commit already holds its notification: if the process dies before
    the on-call lookup, the background sends it, addressed to the service, once the hold ends."""
    opening = app.extensions["incident_service"].opening
    row = opening.store_new(  # the first commit of a create, and then nothing
        title="Orphan", service="orphans", severity="high", description=None,
    ).row
    outbox = opening.outbox
    assert outbox.deliver_due(now=opening.clock()) == 0  # held for the lookup that never comes
    later = opening.clock() + outbox.lease + opening.oncall_lookup_bound + timedelta(seconds=1)
    assert outbox.deliver_due(now=later) == 1
    (page,) = notifier.requests_to(NOTIFY_PATH)
    assert page.body["incident_id"] == row.incident_id and page.body["engineer"] == "orphans"


# --------------------------------------------------------------------------- notification


def test_notification_body_is_the_contract_one(client, notifier):
    incident = new_incident(client, severity="high", title="Queue backlog").get_json()
    (notification,) = notifier.requests_to(NOTIFY_PATH)
    assert notification.method == "POST"
    body = notification.body
    assert body["incident_id"] == incident["incident_id"]
    assert body["engineer"] == "alice@example.com"
    assert body["channel"] == "mock"
    assert body["severity"] == "high"
    assert "Queue backlog" in body["message"] and incident["incident_id"] in body["message"]


def counter(app, name, **labels):
    value = app.extensions["metrics"].registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [({"status": 202, "json_body": {"ok": True}}, "sent"), ({"status": 503, "json_body": {}}, "failed")],
)
def test_notification_outcome_is_counted(app, client, notifier, reply, outcome):
    notifier.respond(**reply)
    before = counter(app, "oncall_notifications_sent_total", channel="mock", status=outcome)
    assert new_incident(client).status_code == 201
    assert counter(app, "oncall_notifications_sent_total", channel="mock", status=outcome) == before + 1


def test_dead_notification_service_does_not_fail_the_create(make_app):
    client = make_app(notification_service_url=closed_port_url()).test_client()
    assert new_incident(client).status_code == 201


def test_slow_notification_service_is_bounded_by_the_client_timeout(make_app, notifier):
    notifier.respond(200, {}, delay=3.0)
    client = make_app(http_client_timeout=0.5).test_client()
    started = time.monotonic()
    assert new_incident(client).status_code == 201
    assert time.monotonic() - started < 2.0


def test_create_counts_incidents_total_open(app, client):
    before = counter(app, "incidents_total", status="open", severity="low")
    new_incident(client, severity="low")
    new_incident(client, severity="low")
    assert counter(app, "incidents_total", status="open", severity="low") == before + 2


def test_created_at_is_now_in_utc(client):
    before = datetime.now().astimezone()
    created = datetime.fromisoformat(new_incident(client).get_json()["created_at"])
    after = datetime.now().astimezone()
    assert before <= created <= after

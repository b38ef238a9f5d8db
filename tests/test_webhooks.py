"""Webhooks (contract 7): subscriptions, a delivery row per matching event written with the change on
every path, deliveries signed per the Standard Webhooks specification (checked by the receiver with
the `standardwebhooks` library), retried with the same `webhook-id`, filtered, stopped by a DELETE,
bounded per receiver, counted and shown.

One file past 300 lines: these are one feature's promises, end to end, and they share its fixtures."""

from __future__ import annotations

import base64
import re
import sys
import threading
import time
import types
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from incident_app import tables
from incident_app.repository import webhooks as webhook_queries
from tests.support.gunicorn import ROOT
from tests.support.incidents import URL
from tests.support.peers import FakePeer, closed_port_url
from tests.support.reliability import rows, wait_until
from tests.test_outbox import own_database  # noqa: F401 (a fixture)

HOOKS = "/api/v1/webhooks"
RECEIVE = "/hook"


@pytest.fixture
def receiver():
    """A webhook receiver on 127.0.0.1; by default it answers 204 at once."""
    peer = FakePeer()
    peer.respond(204, raw=b"")
    yield peer
    peer.close()


@pytest.fixture
def subscribe(client, receiver):
    """subscribe(types=[...], service=..., severity=..., url=...) → the 201's body."""

    def make(**fields):
        response = client.post(HOOKS, json={"url": receiver.url + RECEIVE, **fields})
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return make


def sender(app):
    return app.extensions["background"].webhooks


def later(app, seconds):
    return app.extensions["incident_service"].clock() + timedelta(seconds=seconds)


def deliveries(url, webhook_id=None):
    sql = "SELECT d.*, e.type FROM incidents.webhook_deliveries d JOIN incidents.incident_events e ON e.id = d.event_id"
    found = rows(url, sql + " ORDER BY e.id")
    if webhook_id is None:
        return found
    return [r for r in found if uuid.UUID(str(r.webhook_id)) == uuid.UUID(webhook_id)]


def verified(webhook, recorded):
    """The delivery's JSON, once the receiver's library accepts its signature."""
    return Webhook(webhook["secret"]).verify(recorded.raw, recorded.headers)


def attempts(app, status):
    return app.extensions["metrics"].registry.get_sample_value("webhook_deliveries_total", {"status": status})


# --------------------------------------------------------------------------- subscriptions


def test_subscribing_answers_the_secret_once(client, subscribe):
    created = subscribe(description="chat bot", types=["created", "resolved"], service="payment-api",
                        severity="critical")
    assert uuid.UUID(created["id"])
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 24
    assert {k: created[k] for k in ("description", "types", "service", "severity")} == {
        "description": "chat bot", "types": ["created", "resolved"], "service": "payment-api", "severity": "critical"}
    assert created["pending"] == 0 and created["last_status"] is None and created["last_delivery_at"] is None

    one = client.get(f"{HOOKS}/{created['id']}")
    assert one.status_code == 200
    assert "secret" not in one.get_json()
    assert one.get_json()["url"] == created["url"]
    listed = client.get(HOOKS).get_json()["webhooks"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]


def test_location_names_the_new_webhook(client, receiver):
    response = client.post(HOOKS, json={"url": receiver.url})
    assert response.headers["Location"].endswith(f"{HOOKS}/{response.get_json()['id']}")
    assert response.get_json()["types"] is None


@pytest.mark.parametrize("body", [
    {},
    {"url": "ftp://example.com/hook"},
    {"url": "not a url"},
    {"url": "http://"},
    {"url": "https://example.com/" + "x" * 2048},
    {"url": "http://example.com/\u0000"},
    {"url": 5},
    {"url": "https://example.com", "types": ["created", "exploded"]},
    {"url": "https://example.com", "types": []},
    {"url": "https://example.com", "types": "created"},
    {"url": "https://example.com", "severity": "apocalyptic"},
    {"url": "https://example.com", "service": ""},
    {"url": "https://example.com", "colour": "red"},
])
def test_bad_subscriptions_are_422(client, body):
    response = client.post(HOOKS, json=body)
    assert response.status_code == 422, body
    assert response.get_json()["errors"]


@pytest.mark.parametrize("method", ["get", "delete"])
@pytest.mark.parametrize("webhook_id", [str(uuid.uuid4()), "not-a-uuid"])
def test_unknown_webhook_is_404(client, method, webhook_id):
    response = getattr(client, method)(f"{HOOKS}/{webhook_id}")
    assert response.status_code == 404
    assert response.get_json()["code"] == 404


def test_delete_answers_204_and_forgets_it(client, subscribe):
    webhook = subscribe()
    assert client.delete(f"{HOOKS}/{webhook['id']}").status_code == 204
    assert client.get(f"{HOOKS}/{webhook['id']}").status_code == 404
    assert client.get(HOOKS).get_json() == {"webhooks": []}


def test_every_webhook_endpoint_needs_the_key_when_api_keys_is_set(make_app, receiver):
    client = make_app(api_keys=("k1",)).test_client()
    some = str(uuid.uuid4())
    calls = [("get", HOOKS, None), ("post", HOOKS, {"url": receiver.url}),
             ("get", f"{HOOKS}/{some}", None), ("delete", f"{HOOKS}/{some}", None)]
    for method, path, body in calls:
        assert getattr(client, method)(path, json=body).status_code == 401, (method, path)
    key = {"Authorization": "Bearer k1"}
    created = client.post(HOOKS, json={"url": receiver.url}, headers=key)
    assert created.status_code == 201
    assert client.get(f"{HOOKS}/{created.get_json()['id']}", headers=key).status_code == 200
    # The stream's query-string key is for EventSource and WebSocket only.
    assert client.get(f"{HOOKS}?access_token=k1").status_code == 401


def test_openapi_describes_the_webhook_schemas(client):
    document = client.get("/openapi.json").get_json()
    post = document["paths"]["/api/v1/webhooks"]["post"]
    assert {"201", "422"} <= set(post["responses"])
    created = document["components"]["schemas"]["WebhookCreated"]
    assert "secret" in created["properties"]
    shown = document["components"]["schemas"]["Webhook"]["properties"]
    assert {"last_delivery_at", "last_status", "pending"} <= set(shown)
    assert "404" in document["paths"]["/api/v1/webhooks/{webhook_id}"]["delete"]["responses"]


# --------------------------------------------------------------------------- stored with the change


def test_every_path_that_writes_an_event_stores_its_deliveries(app, client, subscribe, database_url, create_incident):
    webhook = subscribe()
    incident_id = create_incident()["incident_id"]
    assert sorted(r.type for r in deliveries(database_url)) == ["assigned", "created", "notified"]

    client.post(f"{URL}/{incident_id}/notes", json={"content": "looking"})
    client.patch(f"{URL}/{incident_id}", json={"note": "still looking", "author": "bob"})
    escalated = app.extensions["background"].escalator.escalate_due(now=later(app, 3600))
    assert escalated == 1
    client.patch(f"{URL}/{incident_id}", json={"status": "acknowledged"})
    client.patch(f"{URL}/{incident_id}", json={"status": "resolved"})
    client.post(f"{URL}/{incident_id}/alerts", json={"alert_ids": [str(uuid.uuid4())]})

    timeline = [e["type"] for e in client.get(f"{URL}/{incident_id}/events").get_json()["events"]]
    stored = deliveries(database_url, webhook["id"])
    assert sorted(r.type for r in stored) == sorted(timeline)
    assert {"note_added", "escalated", "acknowledged", "resolved", "alerts_linked"} <= set(timeline)
    assert {r.state for r in stored} == {"pending"}
    assert len({r.id for r in stored}) == len(stored)


def test_events_written_before_the_subscription_are_not_delivered(client, subscribe, database_url, create_incident):
    create_incident()
    subscribe()
    assert deliveries(database_url) == []


postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
_EVENT = ("INSERT INTO incidents.incident_events (incident_id, type, details, created_at)"
          " VALUES (:pk, :type, '{}', now()) RETURNING id")


def lock_waiters(url):
    """Backends of this database waiting for a lock on the timeline."""
    return rows(url, "SELECT pid FROM pg_locks WHERE NOT granted"
                     " AND relation = 'incidents.incident_events'::regclass")


@postgresql_only
def test_every_event_committed_after_the_subscriptions_201_is_delivered(client, receiver, database_url,
                                                                       create_incident):
    """The boundary of migration 0009's guard. An event written before the subscription, committed
    while it is being stored, and one written meanwhile: whichever commits after the 201 has its
    delivery (repository/webhooks.insert makes the subscription wait for the first, the second for it)."""
    pk = rows(database_url, "SELECT id FROM incidents.incidents WHERE incident_id = :i",
              i=create_incident()["incident_id"])[0].id
    engine = sa.create_engine(database_url)
    answers, later_event = [], []

    def write_later_event():
        with engine.begin() as conn:
            later_event.append(conn.execute(sa.text(_EVENT), {"pk": pk, "type": "reassigned"}).scalar_one())

    try:
        with engine.connect() as earlier:
            earlier.begin()
            earlier_event = earlier.execute(sa.text(_EVENT), {"pk": pk, "type": "note_added"}).scalar_one()
            storing = threading.Thread(target=lambda: answers.append(
                client.post(HOOKS, json={"url": receiver.url + RECEIVE})))
            storing.start()
            assert wait_until(lambda: answers or lock_waiters(database_url), timeout=10)
            writing = threading.Thread(target=write_later_event)
            writing.start()
            wait_until(lambda: later_event or len(lock_waiters(database_url)) == 2, timeout=10)
            earlier_after_201 = bool(answers)
            earlier.commit()
        storing.join(10)
        writing.join(10)
    finally:
        engine.dispose()
    assert [answer.status_code for answer in answers] == [201]
    delivered = {r.event_id for r in deliveries(database_url)}
    assert later_event[0] in delivered
    assert earlier_event in delivered or not earlier_after_201, "committed after the 201, yet not delivered"


def test_a_failed_change_stores_no_delivery(client, subscribe, database_url, create_incident):
    subscribe()
    incident_id = create_incident(status="resolved")["incident_id"]
    before = len(deliveries(database_url))
    assert client.patch(f"{URL}/{incident_id}", json={"status": "open", "note": "x"}).status_code == 400
    assert len(deliveries(database_url)) == before


@pytest.mark.parametrize(("filters", "expected"), [
    ({"types": ["created", "resolved"]}, ["created", "resolved"]),
    ({"service": "payment-api"}, ["created", "assigned", "notified", "resolved"]),
    ({"service": "search"}, []),
    ({"severity": "critical"}, ["created", "assigned", "notified", "resolved"]),
    ({"severity": "low"}, []),
    ({"types": ["resolved"], "service": "payment-api", "severity": "critical"}, ["resolved"]),
])
def test_filters_choose_the_events(subscribe, database_url, create_incident, filters, expected):
    webhook = subscribe(**filters)
    create_incident(service="payment-api", severity="critical", status="resolved")
    assert sorted(r.type for r in deliveries(database_url, webhook["id"])) == sorted(expected)


# --------------------------------------------------------------------------- delivery


def test_delivery_is_the_feed_event_signed_for_the_receivers_library(app, client, subscribe, receiver, create_incident):
    webhook = subscribe(types=["created"])
    incident = create_incident()
    assert sender(app).deliver_due(now=later(app, 1)) == 1
    (recorded,) = receiver.requests_to(RECEIVE)
    event = verified(webhook, recorded)
    assert recorded.headers["Content-Type"] == "application/json"
    assert event["type"] == "created" and event["incident_id"] == incident["incident_id"]
    assert event["incident"]["service"] == incident["service"] and "alerts" not in event["incident"]
    assert set(event) == {"cursor", "type", "incident_id", "created_at", "actor", "details", "incident"}
    # The same event as the stream replays it.
    timeline = client.get(f"{URL}/{incident['incident_id']}/events").get_json()["events"]
    assert event["created_at"] == timeline[0]["created_at"]
    with pytest.raises(WebhookVerificationError):
        Webhook(subscribe()["secret"]).verify(recorded.raw, recorded.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook["secret"]).verify(recorded.raw.replace(b"created", b"resolved", 1), recorded.headers)


def test_receiver_down_then_up_gets_everything_with_the_same_webhook_ids(
    app, client, subscribe, receiver, database_url, create_incident
):
    webhook = subscribe()
    receiver.respond(503, {"error": "down"})
    create_incident()
    work = sender(app)
    assert work.deliver_due(now=later(app, 1)) == 3
    assert attempts(app, "failed") == 3
    assert work.deliver_due(now=later(app, 2)) == 0, "not due before the first retry"
    shown = client.get(f"{HOOKS}/{webhook['id']}").get_json()
    assert shown["pending"] == 3 and shown["last_status"] == "failed" and shown["last_delivery_at"]
    assert work.deliver_due(now=later(app, 6)) == 3, "the first retry comes within 10 seconds"
    assert work.deliver_due(now=later(app, 6 + 9)) == 0, "then the wait doubles"

    receiver.respond(200, {"ok": True})
    assert work.deliver_due(now=later(app, 6 + 11)) == 3
    received = receiver.requests_to(RECEIVE)
    assert len(received) == 9
    ids = [r.headers["webhook-id"] for r in received]
    assert len(set(ids)) == 3 and all(ids.count(i) == 3 for i in ids), "each retry keeps its webhook-id"
    bodies = {}
    for recorded in received:
        verified(webhook, recorded)
        bodies.setdefault(recorded.headers["webhook-id"], set()).add(recorded.raw)
    assert all(len(sent) == 1 for sent in bodies.values()), "every retry sends the first attempt's body"
    assert attempts(app, "sent") == 3 and attempts(app, "failed") == 6
    assert {r.state for r in deliveries(database_url)} == {"sent"}
    shown = client.get(f"{HOOKS}/{webhook['id']}").get_json()
    assert shown["pending"] == 0 and shown["last_status"] == "sent"
    assert work.deliver_due(now=later(app, 3600)) == 0, "a delivered event is never sent again"


def test_metric_series_exist_from_the_first_scrape(client):
    text = client.get("/metrics").get_data(as_text=True)
    assert 'webhook_deliveries_total{status="sent"} 0.0' in text
    assert 'webhook_deliveries_total{status="failed"} 0.0' in text
    assert "webhook_deliveries_given_up_total 0.0" in text


def test_gives_up_after_24_hours_recorded_and_counted(app, client, subscribe, receiver, database_url, create_incident):
    webhook = subscribe(types=["created"])
    receiver.respond(500, {})
    create_incident()
    work = sender(app)
    work.deliver_due(now=later(app, 1))
    assert work.deliver_due(now=later(app, 24 * 3600 + 1)) == 1
    (row,) = deliveries(database_url)
    assert row.state == "given_up" and row.last_status == "given_up" and row.finished_at is not None
    registry = app.extensions["metrics"].registry
    assert registry.get_sample_value("webhook_deliveries_given_up_total") == 1
    assert client.get(f"{HOOKS}/{webhook['id']}").get_json()["last_status"] == "given_up"
    assert work.deliver_due(now=later(app, 48 * 3600)) == 0


@pytest.mark.parametrize("reply", [
    {"status": 302, "raw": b""},  # a redirect is not followed: not delivered
    {"status": 404, "raw": b"{}"},
])
def test_anything_but_a_2xx_is_retried(app, subscribe, receiver, database_url, create_incident, reply):
    subscribe(types=["created"])
    receiver.respond(**reply)
    create_incident()
    sender(app).deliver_due(now=later(app, 1))
    assert len(receiver.requests_to(RECEIVE)) == 1
    assert [(r.state, r.attempts) for r in deliveries(database_url)] == [("pending", 1)]


def test_refused_connection_and_timeout_are_retried(make_app, database_url, create_incident):
    app = make_app(http_client_timeout=0.3)
    client = app.test_client()
    slow = FakePeer()
    slow.respond(200, {}, delay=2)
    try:
        for url in (closed_port_url(), slow.url):
            client.post(HOOKS, json={"url": url, "types": ["created"]})
        create_incident(via=client)
        assert sender(app).deliver_due(now=later(app, 1)) == 2
        assert [(r.state, r.last_status) for r in deliveries(database_url)] == [("pending", "failed")] * 2
    finally:
        slow.close()


def test_a_long_reply_is_read_only_up_to_64_kib_and_its_status_stands(app, subscribe, receiver, database_url,
                                                                       create_incident):
    subscribe(types=["created"])
    receiver.respond(200, raw=b"x" * (4 << 20))
    create_incident()
    sender(app).deliver_due(now=later(app, 1))
    assert [r.state for r in deliveries(database_url)] == ["sent"]


def test_a_deleted_webhook_receives_nothing_more(app, client, subscribe, receiver, database_url, create_incident):
    webhook = subscribe()
    receiver.respond(503, {})
    create_incident()
    sender(app).deliver_due(now=later(app, 1))
    assert client.delete(f"{HOOKS}/{webhook['id']}").status_code == 204
    receiver.reset()
    create_incident()
    assert deliveries(database_url) == []
    assert sender(app).deliver_due(now=later(app, 3600)) == 0
    assert receiver.requests_to(RECEIVE) == []


def test_each_subscription_gets_its_own_delivery_and_signature(app, client, receiver, database_url, create_incident):
    hooks = [client.post(HOOKS, json={"url": f"{receiver.url}{RECEIVE}", "types": ["created"]}).get_json()
             for _ in range(3)]
    create_incident()
    assert sender(app).deliver_due(now=later(app, 1)) == 3
    received = receiver.requests_to(RECEIVE)
    assert len({r.headers["webhook-id"] for r in received}) == 3
    for recorded in received:
        assert sum(_accepts(hook, recorded) for hook in hooks) == 1


def _accepts(hook, recorded) -> bool:
    try:
        verified(hook, recorded)
        return True
    except WebhookVerificationError:
        return False


def test_a_hanging_receiver_holds_only_its_own_slots(make_app, database_url, create_incident, receiver):
    app = make_app(http_client_timeout=5)
    client = app.test_client()
    hanging = FakePeer()
    hanging.respond(200, {}, delay=3)
    work = sender(app)
    started: list[threading.Thread] = []
    try:
        stuck = client.post(HOOKS, json={"url": hanging.url + RECEIVE}).get_json()
        client.post(HOOKS, json={"url": receiver.url + RECEIVE}).get_json()
        for _ in range(4):
            create_incident(via=client)  # 12 events for each
        began = time.monotonic()
        started += work.dispatch(now=later(app, 1))

        def healthy_done() -> bool:
            started.extend(work.dispatch(now=later(app, 1)))  # what the loop does as slots free
            return len(receiver.requests_to(RECEIVE)) == 12

        # The healthy receiver's rows all go while the hanging one holds its slots.
        assert wait_until(healthy_done, timeout=2.5)
        assert time.monotonic() - began < 3, "before the hanging receiver answered once"
        assert len(hanging.requests_to(RECEIVE)) == work.per_webhook, "no more in flight than its bound"
        assert client.get(f"{HOOKS}/{stuck['id']}").get_json()["pending"] == 12
    finally:
        for thread in started:
            thread.join(6)
        hanging.close()


def test_the_readmes_receiver_example_accepts_a_delivery_and_refuses_a_forged_one(app, subscribe, receiver,
                                                                                   create_incident):
    webhook = subscribe(types=["created"])
    create_incident()
    sender(app).deliver_due(now=later(app, 1))
    (recorded,) = receiver.requests_to(RECEIVE)
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme[readme.index("### Webhooks"):], re.S).group(1)
    module = types.ModuleType("readme_receiver")
    module.__file__ = str(ROOT / "readme_receiver.py")  # Flask wants a module with a path
    sys.modules[module.__name__] = module
    try:
        exec(example.replace('"whsec_…"', repr(webhook["secret"])), module.__dict__)
        example_client = module.app.test_client()
        assert example_client.post("/hooks/incidents", data=recorded.raw, headers=recorded.headers).status_code == 204
        forged = recorded.raw.replace(b'"created"', b'"resolved"', 1)
        assert example_client.post("/hooks/incidents", data=forged, headers=recorded.headers).status_code == 400
    finally:
        del sys.modules[module.__name__]


def test_attempts_that_ended_together_are_recorded_in_one_statement(app, subscribe, database_url, create_incident):
    subscribe()
    create_incident()
    engine = app.extensions["engine"]
    now = later(app, 1)
    with engine.connect() as conn:
        ids = [r.id for r in conn.execute(sa.select(tables.webhook_deliveries.c.id))]
    outcomes = [webhook_queries.outcome(i, state="sent", attempts=1, next_attempt_at=now, finished_at=now, body="{}",
                                        attempted_at=now, status="sent") for i in ids]
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE"):
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.begin() as conn:
            webhook_queries.record(conn, outcomes)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(ids) == 3
    assert [r.state for r in deliveries(database_url)] == ["sent"] * 3
    # PostgreSQL: one statement for the batch; SQLite, in process: one executemany.
    assert len(statements) == 1


def test_a_hanging_receiver_delays_neither_notifications_nor_other_receivers(
    make_app, notifier, own_database, create_incident, receiver
):
    hanging = FakePeer()
    hanging.respond(200, {}, delay=30)
    notifier.respond(503, {})
    app = make_app(database_url=own_database, http_client_timeout=20)
    client = app.test_client()
    client.post(HOOKS, json={"url": hanging.url + RECEIVE})
    client.post(HOOKS, json={"url": receiver.url + RECEIVE})
    create_incident(via=client)  # its page fails: the background retries it
    notifier.respond(200, {})
    background = app.extensions["background"].start()
    try:
        outbox_sent = wait_until(lambda: rows(own_database, "SELECT state FROM incidents.notification_outbox")[0].state
                                 == "sent", timeout=15)
        healthy = wait_until(lambda: len(receiver.requests_to(RECEIVE)) >= 4, timeout=15)  # 3 events + notified
        assert outbox_sent and healthy
        assert len(hanging.requests_to(RECEIVE)) >= 3
        stuck = [r for r in deliveries(own_database) if r.last_status is None]
        assert stuck, "the hanging receiver's attempts are still in flight, unrecorded"
    finally:
        background.stop()
        hanging.close()


def test_finished_deliveries_are_forgotten_after_a_week_pending_ones_never(app, subscribe, receiver, database_url,
                                                                           create_incident):
    subscribe(types=["created"])
    create_incident()
    work = sender(app)
    work.deliver_due(now=later(app, 1))
    receiver.respond(503, {})
    create_incident()
    work.deliver_due(now=later(app, 2))
    assert sorted(r.state for r in deliveries(database_url)) == ["pending", "sent"]
    work.clock = lambda: later(app, 6 * 24 * 3600)
    assert work.purge_finished() == 0, "kept for a week"
    work.clock = lambda: later(app, 8 * 24 * 3600)
    assert work.purge_finished() == 1
    assert [r.state for r in deliveries(database_url)] == ["pending"]
    assert "purge finished webhook deliveries" in [job.name for job in app.extensions["background"].jobs()]

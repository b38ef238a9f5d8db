"""Idempotency-Key on POST /api/v1/incidents: replay, mismatch (422), in flight (409), 24 hours."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from incident_app.idempotency import request_fingerprint
from tests.support.incidents import VALID
from tests.support.reliability import engine_for, rows, wait_until

NOTIFY = "/api/v1/notify"
ONCALL = "/api/v1/oncall/current"


def create(client, key, body=None):
    return client.post("/api/v1/incidents", json=body or VALID, headers={"Idempotency-Key": key})


def test_retry_with_same_key_and_body_replays_the_first_incident(client, oncall, notifier):
    first = create(client, "alert-42")
    again = create(client, "alert-42")
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.get_json()["incident_id"] == first.get_json()["incident_id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(oncall.requests_to(ONCALL)) == 1, "nobody is assigned again"
    assert len(notifier.requests_to(NOTIFY)) == 1, "nobody is notified again"
    assert client.get("/api/v1/incidents").get_json()["total"] == 1


def test_same_key_with_another_body_is_422(client):
    create(client, "alert-43")
    response = create(client, "alert-43", {**VALID, "severity": "low"})
    assert response.status_code == 422
    assert response.get_json()["code"] == 422
    assert "Idempotency-Key" in response.get_json()["message"]


def test_body_comparison_ignores_key_order_and_duplicate_alerts():
    alert = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert request_fingerprint({"a": 1, "b": [alert]}) == request_fingerprint({"b": [alert], "a": 1})


def test_key_while_the_first_is_in_flight_is_409(app, oncall, notifier):
    oncall.respond(200, {"primary": {"email": "slow@example.com"}}, delay=1.5)
    first: dict = {}
    thread = threading.Thread(target=lambda: first.setdefault("response", create(app.test_client(), "alert-44")))
    thread.start()
    try:
        assert wait_until(lambda: oncall.requests_to(ONCALL), timeout=5)  # the first holds the key now
        second = create(app.test_client(), "alert-44")
    finally:
        thread.join()
    assert second.status_code == 409
    assert second.get_json()["code"] == 409
    assert first["response"].status_code == 201
    assert create(app.test_client(), "alert-44").status_code == 201  # and once done, it replays


def test_without_a_key_every_post_creates(client):
    client.post("/api/v1/incidents", json=VALID)
    client.post("/api/v1/incidents", json=VALID)
    assert client.get("/api/v1/incidents").get_json()["total"] == 2


def test_keys_are_per_key(client):
    a = create(client, "key-a").get_json()["incident_id"]
    b = create(client, "key-b").get_json()["incident_id"]
    assert a != b


def test_key_longer_than_255_characters_is_422(client):
    response = create(client, "k" * 256)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.get_json()["errors"]


def test_expired_key_starts_afresh_and_expired_keys_are_purged(app, client, database_url):
    first = create(client, "alert-45").get_json()["incident_id"]
    engine = engine_for(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE " + ("" if database_url.startswith("sqlite") else "incidents.")
                             + "idempotency_keys SET expires_at = :past"),
                     {"past": app.extensions["incident_service"].clock() - timedelta(seconds=1)})
    engine.dispose()
    second = create(client, "alert-45")
    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    assert second.get_json()["incident_id"] != first

    keys = app.extensions["background"].idempotency
    keys.clock = lambda: app.extensions["incident_service"].clock() + timedelta(hours=24, seconds=1)
    assert keys.purge_expired() == 1
    assert rows(database_url, "SELECT key FROM incidents.idempotency_keys") == []


def test_key_of_a_request_that_died_before_creating_is_taken_over_when_stale(app, client):
    keys = app.extensions["background"].idempotency
    real_clock = keys.clock
    fields = {**VALID, "alert_ids": []}
    keys.clock = lambda: real_clock() - timedelta(hours=1)  # reserved an hour ago, never finished
    keys.reserve("alert-46", request_fingerprint(fields))
    keys.clock = real_clock
    response = create(client, "alert-46")
    assert response.status_code == 201
    assert client.get("/api/v1/incidents").get_json()["total"] == 1


def test_a_fresh_reservation_without_incident_is_in_flight(app, client):
    keys = app.extensions["background"].idempotency
    keys.reserve("alert-47", request_fingerprint({**VALID, "alert_ids": []}))
    assert create(client, "alert-47").status_code == 409


def test_header_is_in_the_openapi_document(client):
    post = client.get("/openapi.json").get_json()["paths"]["/api/v1/incidents"]["post"]
    assert any(p["in"] == "header" and p["name"] == "Idempotency-Key" for p in post["parameters"])
    assert "409" in post["responses"]
    assert "Idempotent-Replayed" in post["responses"]["201"]["headers"]

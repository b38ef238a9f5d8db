"""It starts whatever the database is doing: refused or hung at start, the service is live within
seconds, ready and the API answer 503 JSON quickly, and once the database answers the schema is
migrated and the service serves, with no restart, however long it waited."""

from __future__ import annotations

import json
import time

import pytest
import requests
from sqlalchemy.engine import make_url

from incident_app import migrate
from tests.support.gunicorn import GunicornService
from tests.support.proxy import TcpProxy
from tests.support.reliability import engine_for, wait_until

VALID = {"title": "Started without a database", "service": "drill", "severity": "low"}


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_not_ready_yet(service: GunicornService) -> None:
    live, took = timed(lambda: requests.get(f"{service.url}/health/live", timeout=5))
    assert live.status_code == 200 and took < 2
    ready, took = timed(lambda: requests.get(f"{service.url}/health/ready", timeout=5))
    assert ready.status_code == 503 and ready.json()["status"] == "not ready" and took < 2.5, took
    create, took = timed(lambda: requests.post(f"{service.url}/api/v1/incidents", json=VALID, timeout=10))
    assert create.status_code == 503 and took < 5, (create.status_code, took)
    assert create.headers["Content-Type"].startswith("application/json") and create.json()["code"] == 503


@pytest.mark.parametrize(("outage", "wait"), [("refused", 90), ("hung", 15)])
def test_starts_without_the_database_then_serves_once_it_answers(pg_database, tmp_path, outage, wait):
    database_url = pg_database()  # empty: the schema comes only once the database answers
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    if outage == "refused":
        proxy.cut()
    else:
        proxy.silence()
    log = tmp_path / "service.log"
    service = GunicornService(
        {"DATABASE_URL": url.set(port=proxy.port).render_as_string(hide_password=False),
         "ONCALL_SERVICE_URL": "http://127.0.0.1:9", "NOTIFICATION_SERVICE_URL": "http://127.0.0.1:9",
         "HTTP_CLIENT_TIMEOUT": "0.5", "LOG_LEVEL": "INFO"},
        workers=2, log_path=log,
    )
    try:
        started = time.monotonic()
        service.start(timeout=5, until="/health/live")
        assert time.monotonic() - started < 5
        # Longer than the master once waited (60 s) before it gave up and exited.
        until = time.monotonic() + wait
        while time.monotonic() < until:
            assert_not_ready_yet(service)
            time.sleep(1)
        assert service.process.poll() is None, "the service must still be running"

        proxy.restore()
        back = time.monotonic()
        wait_until(lambda: requests.get(f"{service.url}/health/ready", timeout=3).status_code == 200, timeout=10)
        created = wait_until(
            lambda: requests.post(f"{service.url}/api/v1/incidents", json=VALID, timeout=5).status_code == 201,
            timeout=10,
        )
        assert created and time.monotonic() - back < 10
        with engine_for(database_url).connect() as conn:
            assert migrate.is_current(conn)
        assert service.process.poll() is None, "served with no restart"
    finally:
        service.stop()
        proxy.close()
    lines = log.read_text().splitlines()
    assert lines, "the service logged nothing"
    for line in lines:
        json.loads(line)  # every line JSON, start-up and migration included
    messages = [json.loads(line)["message"] for line in lines]
    assert sum(message.startswith("Running upgrade") for message in messages) >= 1
    assert any(message.startswith("database not ready for migration") for message in messages)


def test_the_api_answers_503_until_the_schema_is_current_then_serves(make_app, pg_database):
    database_url = pg_database()  # empty
    app = make_app(database_url=database_url)
    client = app.test_client()
    refused = client.post("/api/v1/incidents", json=VALID)
    assert refused.status_code == 503 and refused.get_json()["code"] == 503
    assert refused.headers["Retry-After"] == "5"
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 503

    migrate.upgrade(app.extensions["settings"])  # as another replica would
    created = wait_until(lambda: client.post("/api/v1/incidents", json=VALID).status_code == 201, timeout=5)
    assert created and client.get("/health/ready").status_code == 200

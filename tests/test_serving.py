"""Serving as production does: gunicorn, gevent workers that a blocked query does not stall, JSON
logs carrying the request id."""

import json
import threading
import time

import pytest
import requests
import sqlalchemy as sa

from tests.support.gunicorn import GunicornService
from tests.support.incidents import VALID


@pytest.fixture
def one_worker(postgres_url, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "service.log"
    service = GunicornService(
        {"DATABASE_URL": postgres_url, "HOME": str(home), "LOG_LEVEL": "INFO",
         "ONCALL_SERVICE_URL": "http://127.0.0.1:9", "NOTIFICATION_SERVICE_URL": "http://127.0.0.1:9",
         "HTTP_CLIENT_TIMEOUT": "0.5"},
        workers=1, log_path=log,
    ).start()
    yield service, log, home
    service.stop()


def wait_for_lock_waiter(engine, timeout=10.0):
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'")).scalar()
            if waiting:
                return True
            time.sleep(0.05)
    return False


def test_a_query_waiting_on_a_lock_does_not_stall_the_worker(one_worker, postgres_url):
    service, _, _ = one_worker
    incident_id = requests.post(f"{service.url}/api/v1/incidents", json=VALID, timeout=10).json()["incident_id"]
    engine = sa.create_engine(postgres_url)
    blocked: dict = {}
    with engine.connect() as holder:
        holder.begin()
        holder.execute(sa.text("SELECT 1 FROM incidents.incidents WHERE incident_id = :i FOR UPDATE"),
                       {"i": incident_id})

        def acknowledge():
            blocked["response"] = requests.patch(
                f"{service.url}/api/v1/incidents/{incident_id}", json={"status": "acknowledged"}, timeout=30)

        waiter = threading.Thread(target=acknowledge)
        waiter.start()
        assert wait_for_lock_waiter(engine), "the PATCH never waited on the row lock"
        assert waiter.is_alive()
        # The single worker still serves other requests, database ones included.
        started = time.monotonic()
        listed = requests.get(f"{service.url}/api/v1/incidents", timeout=5)
        assert listed.status_code == 200
        assert time.monotonic() - started < 2
        holder.rollback()
    waiter.join(timeout=10)
    engine.dispose()
    assert blocked["response"].status_code == 200


def test_logs_are_json_lines_with_the_request_id(one_worker):
    service, log, _ = one_worker
    requests.get(f"{service.url}/api/v1/incidents", headers={"X-Request-ID": "trace-42"}, timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        mine = [entry for entry in lines if entry.get("request_id") == "trace-42"]
        if mine:
            break
        time.sleep(0.1)
    assert mine, "no log line carries the request id"
    assert mine[0]["message"] == "GET /api/v1/incidents 200"
    non_json = [line for line in log.read_text().splitlines() if line.strip() and not line.startswith("{")]
    assert non_json == []


def test_no_control_socket_is_left_in_home(one_worker):
    _, _, home = one_worker
    assert [p.name for p in home.rglob("*")] == []


def test_a_worker_freezes_what_it_built_before_serving(one_worker):
    """gunicorn.conf.py: a full garbage collection then skips the app's long-lived objects."""
    service, log, _ = one_worker
    assert requests.get(f"{service.url}/health/live", timeout=10).status_code == 200
    ready = [json.loads(line)["message"] for line in log.read_text().splitlines()
             if line.startswith("{") and "frozen out of garbage collection" in line]
    assert len(ready) == 1
    frozen = int(ready[0].split()[2])
    assert frozen > 10_000  # the app and everything it imported, not a handful

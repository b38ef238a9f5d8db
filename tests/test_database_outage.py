"""While PostgreSQL is unreachable the API answers 503 JSON quickly; it recovers by itself."""

import time

import pytest
import requests
from sqlalchemy.engine import make_url

from incident_app.db import CONNECT_TIMEOUT, PING_AFTER_IDLE_SECONDS
from tests.support.gunicorn import GunicornService
from tests.support.incidents import VALID
from tests.support.proxy import TcpProxy


@pytest.fixture
def proxied_service(postgres_url, tmp_path):
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    service = GunicornService(
        {"DATABASE_URL": url.set(port=proxy.port).render_as_string(hide_password=False),
         "ONCALL_SERVICE_URL": "http://127.0.0.1:9", "NOTIFICATION_SERVICE_URL": "http://127.0.0.1:9",
         "HTTP_CLIENT_TIMEOUT": "0.5"},
        workers=2, log_path=tmp_path / "service.log",
    ).start()
    yield service, proxy
    service.stop()
    proxy.close()


def poll(call, accept, timeout):
    deadline = time.monotonic() + timeout
    while True:
        response = call()
        if accept(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_outage_answers_503_json_then_recovers_without_restart(proxied_service):
    service, proxy = proxied_service
    api = f"{service.url}/api/v1/incidents"
    before = requests.post(api, json=VALID, timeout=10)
    assert before.status_code == 201
    incident_id = before.json()["incident_id"]

    proxy.cut()
    calls = [
        lambda: requests.get(api, timeout=10),
        lambda: requests.post(api, json=VALID, timeout=10),
        lambda: requests.get(f"{api}/{incident_id}", timeout=10),
        lambda: requests.patch(f"{api}/{incident_id}", json={"status": "acknowledged"}, timeout=10),
        lambda: requests.get(f"{api}/analytics", timeout=10),
    ]
    for call in calls * 2:  # twice: both workers, and connections already broken in the pool
        started = time.monotonic()
        response = call()
        assert time.monotonic() - started < 5, "an outage must not hold a request"
        assert response.status_code == 503, response.text
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["code"] == 503

    proxy.restore()
    recovered = poll(lambda: requests.get(api, timeout=10), lambda r: r.status_code == 200, timeout=20)
    assert recovered.status_code == 200
    after = poll(lambda: requests.post(api, json=VALID, timeout=10), lambda r: r.status_code == 201, timeout=10)
    assert after.status_code == 201
    # Polled too: a worker that had not yet seen the schema at head when the database went away
    # (its start-up still migrating) asks again at most once a second, so it may answer 503 for a
    # moment after the first worker recovers.
    acked = poll(lambda: requests.patch(f"{api}/{incident_id}", json={"status": "acknowledged"}, timeout=10),
                 lambda r: r.status_code != 503, timeout=10)
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"


def test_a_silent_database_answers_503_within_seconds(proxied_service):
    """A database that keeps connections open and never answers: no request may hang on it."""
    service, proxy = proxied_service
    api = f"{service.url}/api/v1/incidents"
    assert requests.post(api, json=VALID, timeout=10).status_code == 201
    proxy.silence()
    # Let the pooled connections go idle long enough to be pinged before their next use.
    time.sleep(PING_AFTER_IDLE_SECONDS + 0.2)
    for call in (lambda: requests.get(api, timeout=30), lambda: requests.post(api, json=VALID, timeout=30)):
        started = time.monotonic()
        response = call()
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 3 * CONNECT_TIMEOUT + 1
    proxy.restore()
    recovered = poll(lambda: requests.get(api, timeout=30), lambda r: r.status_code == 200, timeout=20)
    assert recovered.status_code == 200

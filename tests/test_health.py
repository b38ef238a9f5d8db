"""The probes: bodies as the contract says, readiness tied to the migrations, and answers within
about two seconds with the database stopped or hung, in one process and under gunicorn/gevent."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import requests
from sqlalchemy.engine import make_url

from tests.support.gunicorn import GunicornService
from tests.support.proxy import TcpProxy

PROBE_BOUND = 2.5  # "about 2 seconds"
LIVE_BOUND = 0.5


class SilentDatabase:
    """Accepts TCP connections on 127.0.0.1 and never says a word, like a hung database server."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the port is really freed
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def timed(get, path: str):
    started = time.monotonic()
    response = get(path)
    return response, time.monotonic() - started


def json_of(response) -> dict:
    return response.get_json() if hasattr(response, "get_json") else response.json()


# --------------------------------------------------------------------------- bodies


def test_live_says_alive(client):
    response = client.get("/health/live")
    assert (response.status_code, response.get_json()) == (200, {"status": "alive"})


def test_ready_when_database_answers_and_schema_is_at_head(client):
    response = client.get("/health/ready")
    assert (response.status_code, response.get_json()) == (200, {"status": "ready"})


def test_health_body_has_every_contract_field(make_app):
    app = make_app(health_memory_threshold=100.0, health_disk_threshold=100.0, environment="staging")
    response = app.test_client().get("/health")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert (body["service"], body["version"], body["environment"]) == ("incident-management", "1.0.0", "staging")
    assert datetime.fromisoformat(body["timestamp"]).utcoffset() is not None
    assert body["uptime_seconds"] >= 0
    assert body["checks"]["database"]["status"] == "healthy"
    assert body["checks"]["database"]["latency_ms"] >= 0
    for check in ("memory", "disk"):
        assert body["checks"][check]["status"] == "healthy"
        assert 0 <= body["checks"][check]["percent"] <= 100


@pytest.mark.parametrize("threshold", ["health_memory_threshold", "health_disk_threshold"])
def test_memory_or_disk_over_threshold_is_degraded_and_503(make_app, threshold):
    app = make_app(**{threshold: 0.0})
    response = app.test_client().get("/health")
    body = response.get_json()
    assert response.status_code == 503
    assert body["status"] == "degraded"
    check = "memory" if threshold == "health_memory_threshold" else "disk"
    assert body["checks"][check]["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "healthy"


def test_not_ready_until_migrations_are_at_head(make_app, pg_database, tmp_path):
    for url in (pg_database(), f"sqlite:///{tmp_path / 'unmigrated.db'}"):
        response = make_app(database_url=url).test_client().get("/health/ready")
        assert response.status_code == 503
        reason = "database schema is not at the current migration"
        assert response.get_json() == {"status": "not ready", "reason": reason}


# --------------------------------------------------------------------------- outages, one process


@pytest.fixture
def proxy(postgres_url):
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy
    proxy.close()


def through(postgres_url: str, port: int) -> str:
    return make_url(postgres_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def assert_bounded_outage(get) -> None:
    response, took = timed(get, "/health")
    assert response.status_code == 503 and took < PROBE_BOUND, took
    body = json_of(response)
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == {"status": "unhealthy", "latency_ms": None}

    response, took = timed(get, "/health/ready")
    assert response.status_code == 503 and took < PROBE_BOUND, took
    assert json_of(response)["status"] == "not ready"
    assert json_of(response)["reason"].startswith("database unavailable")

    response, took = timed(get, "/health/live")
    assert response.status_code == 200 and took < LIVE_BOUND, took


def test_probes_are_bounded_with_the_database_stopped(make_app, postgres_url, proxy):
    client = make_app(database_url=through(postgres_url, proxy.port)).test_client()
    assert client.get("/health/ready").status_code == 200
    proxy.cut()
    assert_bounded_outage(client.get)
    proxy.restore()
    assert client.get("/health/ready").status_code == 200


def test_probes_are_bounded_with_a_database_that_never_answers(make_app, postgres_url):
    silent = SilentDatabase()
    try:
        client = make_app(database_url=through(postgres_url, silent.port), db_pool_min=0).test_client()
        assert_bounded_outage(client.get)
    finally:
        silent.close()


# --------------------------------------------------------------------------- outages, gunicorn + gevent


@pytest.fixture(scope="module")
def proxied_service(migrated_urls, postgres_available, _session_peers, tmp_path_factory):
    database = make_url(migrated_urls["postgresql"]())
    proxy = TcpProxy(database.host or "127.0.0.1", database.port or 5432)
    oncall, notifier = _session_peers
    service = GunicornService(
        {
            "DATABASE_URL": through(database.render_as_string(hide_password=False), proxy.port),
            "ONCALL_SERVICE_URL": oncall.url,
            "NOTIFICATION_SERVICE_URL": notifier.url,
        },
        workers=2,
        log_path=tmp_path_factory.mktemp("gunicorn-health") / "service.log",
    ).start()
    yield service, proxy
    service.stop()
    proxy.close()


def wait_until_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{url}/health/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.1)
    raise AssertionError("service did not become ready again")


def service_get(service: GunicornService):
    return lambda path: requests.get(f"{service.url}{path}", timeout=10)


def test_gunicorn_probes_are_bounded_with_the_database_stopped(proxied_service):
    service, proxy = proxied_service
    wait_until_ready(service.url)
    proxy.cut()
    try:
        for _ in range(3):  # whichever worker answers
            assert_bounded_outage(service_get(service))
    finally:
        proxy.restore()
    wait_until_ready(service.url)


def test_gunicorn_probes_are_bounded_with_a_database_that_never_answers(proxied_service):
    service, proxy = proxied_service
    wait_until_ready(service.url)
    proxy.cut()
    silent = SilentDatabase(proxy.port)  # the database's address now accepts and stays silent
    try:
        for _ in range(3):
            assert_bounded_outage(service_get(service))
        # Many probes at once still each answer in time: none queues behind another.
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda path: timed(service_get(service), path), ["/health", "/health/ready"] * 10))
        assert [(r.status_code, took < PROBE_BOUND) for r, took in results] == [(503, True)] * 20
    finally:
        silent.close()
        proxy.restore()
    wait_until_ready(service.url)

"""Webhooks under real gunicorn on PostgreSQL: the background loop delivers, a SIGKILL of the workers
between the commit and the delivery loses nothing (delivered after the lease by their successors,
same `webhook-id`), two replicas deliver each event once per subscription, and receivers whose DNS
hangs hold neither the API, nor the peer calls, nor the other receivers."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.support.gunicorn import GunicornService
from tests.support.incidents import VALID
from tests.support.peers import FakePeer
from tests.support.reliability import rows, wait_until
from tests.test_faults import NOTIFY, ONCALL_REPLY, create, fresh_database, peers, services, start  # noqa: F401


@pytest.fixture
def receiver() -> Iterator[FakePeer]:
    peer = FakePeer()
    peer.respond(204, raw=b"")
    yield peer
    peer.close()


def subscribe(service, url, **fields) -> dict:
    response = requests.post(f"{service.url}/api/v1/webhooks", json={"url": url, **fields}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def states(url) -> list[str]:
    return [r.state for r in rows(url, "SELECT state FROM incidents.webhook_deliveries")]


def test_the_background_loop_delivers_signed_events(services, fresh_database, peers, receiver, tmp_path):
    service = start(services, fresh_database, peers, tmp_path, "service")
    hook = subscribe(service, f"{receiver.url}/hook")
    incident_id = create(service).json()["incident_id"]
    received = receiver.wait_for("/hook", 3, timeout=15)
    assert len(received) == 3
    events = [Webhook(hook["secret"]).verify(r.raw, r.headers) for r in received]
    assert {e["incident_id"] for e in events} == {incident_id}
    assert sorted(e["type"] for e in events) == ["assigned", "created", "notified"]
    assert wait_until(lambda: states(fresh_database) == ["sent"] * 3, timeout=10)
    shown = requests.get(f"{service.url}/api/v1/webhooks/{hook['id']}", timeout=10).json()
    assert shown["pending"] == 0 and shown["last_status"] == "sent"
    metrics = requests.get(f"{service.url}/metrics", timeout=10).text
    assert 'webhook_deliveries_total{status="sent"} 3.0' in metrics


def test_sigkill_between_commit_and_delivery_delivers_after_the_lease(
    services, fresh_database, peers, receiver, tmp_path
):
    receiver.respond(200, {}, delay=30)  # hangs: the deliveries are in flight when the kill comes
    service = start(services, fresh_database, peers, tmp_path, "service", HTTP_CLIENT_TIMEOUT="3")  # lease: 8 s
    subscribe(service, f"{receiver.url}/hook", types=["created"])
    created = [create(service).json()["incident_id"] for _ in range(2)]
    in_flight = receiver.wait_for("/hook", 2, timeout=15)
    assert len(in_flight) == 2
    receiver.respond(204, raw=b"")
    workers = psutil.Process(service.process.pid).children()
    assert len(workers) == 2
    for worker in workers:  # every worker, so the one holding the attempts dies too; the master respawns them
        worker.send_signal(signal.SIGKILL)
    attempts = [r.attempts for r in rows(fresh_database, "SELECT attempts FROM incidents.webhook_deliveries")]
    assert attempts == [0, 0], "nothing was recorded: the attempts died with the workers"

    assert wait_until(lambda: states(fresh_database) == ["sent"] * 2, timeout=40, every=0.2)
    redelivered = receiver.requests_to("/hook")[2:]
    assert {r.headers["webhook-id"] for r in redelivered} == {r.headers["webhook-id"] for r in in_flight}
    assert {r.body["incident_id"] for r in redelivered} == set(created)
    assert {w.pid for w in psutil.Process(service.process.pid).children()}.isdisjoint({w.pid for w in workers})


def test_two_replicas_deliver_each_event_once_per_subscription(services, fresh_database, peers, receiver, tmp_path):
    replicas = [start(services, fresh_database, peers, tmp_path, f"replica{n}") for n in (1, 2)]
    hooks = [subscribe(replicas[n % 2], f"{receiver.url}/hook/{n}") for n in range(3)]
    for n in range(10):
        assert create(replicas[n % 2]).status_code == 201
    events = rows(fresh_database, "SELECT count(*) AS n FROM incidents.incident_events")[0].n
    assert wait_until(lambda: states(fresh_database) == ["sent"] * 3 * events, timeout=30, every=0.2)
    for n, hook in enumerate(hooks):
        received = receiver.requests_to(f"/hook/{n}")
        cursors = Counter(Webhook(hook["secret"]).verify(r.raw, r.headers)["cursor"] for r in received)
        assert len(cursors) == events and set(cursors.values()) == {1}, f"subscription {n}"


def by_name(peer: FakePeer) -> str:
    """The peer's URL with `localhost` for its address: reaching it takes a lookup."""
    return peer.url.replace("127.0.0.1", "localhost")


def test_receivers_whose_dns_hangs_hold_neither_the_api_nor_the_peers_nor_other_receivers(
    services, fresh_database, peers, receiver, tmp_path
):
    """12 receivers' lookups block their threads (tests/support/hanging_dns.py), more than the 10 of
    gevent's own pool, through which the peer calls look `localhost` up: in that pool they would
    hold every On-Call and Notification call of the worker."""
    oncall, notifier = peers
    oncall.keep_alive = notifier.keep_alive = False  # every call connects, and so looks the name up
    service = GunicornService(
        {"DATABASE_URL": fresh_database, "ONCALL_SERVICE_URL": by_name(oncall),
         "NOTIFICATION_SERVICE_URL": by_name(notifier), "HTTP_CLIENT_TIMEOUT": "2", "DB_POOL_MAX": "3"},
        workers=1, log_path=tmp_path / "service.log",
        command=[sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "tests.support.hanging_dns:app"],
    ).start()
    services.append(service)
    subscribe(service, f"{receiver.url}/by-address")
    subscribe(service, f"{by_name(receiver)}/by-name")
    create(service)
    assert len(receiver.wait_for("/by-name", 3)) == 3  # its name looked up once, and kept
    for n in range(12):
        subscribe(service, f"http://receiver-{n}.hang.test/hook")
    create(service)

    def hanging_attempts_failed() -> bool:
        found = rows(fresh_database, "SELECT d.last_status FROM incidents.webhook_deliveries d "
                                     "JOIN incidents.webhooks w ON w.id = d.webhook_id WHERE w.url LIKE '%hang.test%'")
        return len(found) == 12 * 3 and all(r.last_status == "failed" for r in found)

    assert wait_until(hanging_attempts_failed, timeout=15), "each attempt fails within HTTP_CLIENT_TIMEOUT"
    began = time.monotonic()
    response = requests.post(f"{service.url}/api/v1/incidents", json=VALID, timeout=10)
    answered_in = time.monotonic() - began
    assert response.status_code == 201
    incident = response.json()
    assert incident["assigned_to"] == ONCALL_REPLY["primary"]["email"], "On-Call was reached by name"
    assert answered_in < 2, "the create waited for no lookup of a receiver"
    assert wait_until(lambda: incident["incident_id"] in {r.body["incident_id"] for r in notifier.requests_to(NOTIFY)},
                      timeout=2), "the page went out by name at once"
    for path in ("/by-address", "/by-name"):
        assert len(receiver.wait_for(path, 9, timeout=5)) == 9, f"{path}: every event of the three creates"
    assert requests.get(f"{service.url}/health/live", timeout=2).status_code == 200

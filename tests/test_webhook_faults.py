"""Webhooks under real gunicorn on PostgreSQL: the background loop delivers, a SIGKILL of the workers
between the commit and the delivery loses nothing (delivered after the lease by their successors,
same `webhook-id`), and two replicas deliver each event once per subscription."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator

import psutil
import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.support.peers import FakePeer
from tests.support.reliability import rows, wait_until
from tests.test_faults import create, fresh_database, peers, services, start  # noqa: F401 (fixtures)


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

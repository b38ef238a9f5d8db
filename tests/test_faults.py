"""Proof under faults, on PostgreSQL with the service under real gunicorn: two replicas, the
Notification Service down, a SIGKILL between commit and delivery, the database cut under a trickle
of creates, and the alert pipeline retrying one create 20 times at once."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url

from incident_app import tables
from tests.support.gunicorn import GunicornService
from tests.support.incidents import VALID
from tests.support.peers import FakePeer
from tests.support.proxy import TcpProxy
from tests.support.reliability import engine_for, rows, wait_until

NOTIFY = "/api/v1/notify"
ONCALL_REPLY = {"primary": {"email": "alice@example.com"}, "secondary": {"email": "bob@example.com"}}


@pytest.fixture
def peers() -> Iterator[tuple[FakePeer, FakePeer]]:
    oncall, notifier = FakePeer(), FakePeer()
    oncall.respond(200, ONCALL_REPLY)
    notifier.respond(200, {"status": "sent"})
    yield oncall, notifier
    oncall.close()
    notifier.close()


@pytest.fixture
def fresh_database(pg_database) -> str:
    """A database of its own: no other test's service works on its outbox or escalations."""
    return pg_database()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[GunicornService]]:
    """Services started by a test, all stopped at its end (SIGKILLed ones included)."""
    started: list[GunicornService] = []
    yield started
    for service in started:
        service.stop()


def start(services, database_url, peers, tmp_path, name, **env) -> GunicornService:
    oncall, notifier = peers
    service = GunicornService(
        {"DATABASE_URL": database_url, "ONCALL_SERVICE_URL": oncall.url,
         "NOTIFICATION_SERVICE_URL": notifier.url, "HTTP_CLIENT_TIMEOUT": "2",
         # Small pools: the PostgreSQL server (100 connections) is shared with other test runs.
         "DB_POOL_MAX": "3", **env},
        workers=2, log_path=tmp_path / f"{name}.log",
    ).start()
    services.append(service)
    return service


def create(service, **headers) -> requests.Response:
    return requests.post(f"{service.url}/api/v1/incidents", json=VALID, headers=headers, timeout=30)


def outbox_states(url) -> list[str]:
    return [r.state for r in rows(url, "SELECT state FROM incidents.notification_outbox")]


# --------------------------------------------------------------------------- two replicas


def test_two_replicas_escalate_once_per_level_deliver_once_and_acknowledge_once(
    services, fresh_database, peers, tmp_path
):
    _, notifier = peers
    fast = {"ESCALATION_TIMEOUT_MINUTES": "0.03", "ESCALATION_CHECK_SECONDS": "0.3"}  # 1.8 s
    replicas = [start(services, fresh_database, peers, tmp_path, f"replica{n}", **fast) for n in (1, 2)]
    created = [create(replicas[n % 2]).json()["incident_id"] for n in range(8)]

    def all_at_level_three() -> bool:
        levels = rows(fresh_database, "SELECT escalation_level FROM incidents.incidents")
        return len(levels) == 8 and all(r.escalation_level == 3 for r in levels)

    assert wait_until(all_at_level_three, timeout=60, every=0.2)
    time.sleep(2 * 1.8)  # long enough for a fourth level, had the limit failed

    events = rows(fresh_database, "SELECT i.incident_id, e.type, e.details FROM incidents.incident_events e"
                                  " JOIN incidents.incidents i ON i.id = e.incident_id ORDER BY e.id")
    for incident_id in created:
        levels = [e.details["level"] for e in events if e.incident_id == incident_id and e.type == "escalated"]
        assert levels == [1, 2, 3], incident_id

    # Every outbox row delivered, each exactly once: the creation's and three escalations' per incident.
    assert wait_until(lambda: set(outbox_states(fresh_database)) == {"sent"}, timeout=20)
    received = Counter(r.body["notification_id"] for r in notifier.requests_to(NOTIFY))
    assert len(received) == 8 * 4
    assert set(received.values()) == {1}
    per_incident = Counter(r.body["incident_id"] for r in notifier.requests_to(NOTIFY))
    assert per_incident == {incident_id: 4 for incident_id in created}

    # Concurrent acknowledges through both replicas: one transition, one MTTA.
    target = created[0]
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(
            lambda n: requests.patch(f"{replicas[n % 2].url}/api/v1/incidents/{target}",
                                     json={"status": "acknowledged"}, timeout=30),
            range(40),
        ))
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["acknowledged_at"] for r in replies}) == 1
    acknowledged = [e for e in rows(fresh_database, "SELECT e.type FROM incidents.incident_events e JOIN "
                                    "incidents.incidents i ON i.id = e.incident_id WHERE i.incident_id = :id",
                                    id=target) if e.type == "acknowledged"]
    assert len(acknowledged) == 1


# --------------------------------------------------------------------------- Notification Service down


def test_notification_service_down_then_back_loses_nothing(services, fresh_database, peers, tmp_path):
    _, notifier = peers
    notifier.respond(503, {"error": "down"})
    service = start(services, fresh_database, peers, tmp_path, "service")
    created = [create(service) for _ in range(6)]
    assert [r.status_code for r in created] == [201] * 6, "a dead Notification Service never fails a create"
    assert outbox_states(fresh_database) == ["pending"] * 6

    back_at = len(notifier.requests_to(NOTIFY))
    notifier.respond(200, {"status": "sent"})
    assert wait_until(lambda: outbox_states(fresh_database) == ["sent"] * 6, timeout=20)
    delivered = {r.body["incident_id"] for r in notifier.requests_to(NOTIFY)[back_at:]}
    assert delivered == {r.json()["incident_id"] for r in created}


def test_sigkill_between_commit_and_delivery_loses_nothing(services, fresh_database, peers, tmp_path):
    _, notifier = peers
    notifier.respond(200, {}, delay=30)  # hangs: every delivery is in flight when the kill comes
    service = start(services, fresh_database, peers, tmp_path, "doomed", HTTP_CLIENT_TIMEOUT="10")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(lambda: create(service)) for _ in range(4)]
        assert len(wait_until(lambda: notifier.requests_to(NOTIFY) if len(notifier.requests_to(NOTIFY)) == 4
                              else None, timeout=20) or []) == 4
        service.stop(signal.SIGKILL)
        for future in futures:
            with pytest.raises(requests.RequestException):
                future.result()
    committed = rows(fresh_database, "SELECT incident_id FROM incidents.incidents")
    assert len(committed) == 4 and outbox_states(fresh_database) == ["pending"] * 4

    restart_at = len(notifier.requests_to(NOTIFY))
    notifier.respond(200, {"status": "sent"})
    start(services, fresh_database, peers, tmp_path, "restarted", HTTP_CLIENT_TIMEOUT="10")
    # The killed attempts' lease (HTTP_CLIENT_TIMEOUT + 5 s) runs out, then the new workers deliver.
    assert wait_until(lambda: outbox_states(fresh_database) == ["sent"] * 4, timeout=40, every=0.2)
    delivered = {r.body["incident_id"] for r in notifier.requests_to(NOTIFY)[restart_at:]}
    assert delivered == {r.incident_id for r in committed}


# --------------------------------------------------------------------------- database outage


def test_database_cut_under_a_trickle_of_creates(services, fresh_database, peers, tmp_path):
    url = make_url(fresh_database)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
        service = start(services, proxied, peers, tmp_path, "proxied")
        replies: list[tuple[float, requests.Response]] = []
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():
                replies.append((time.monotonic(), create(service)))
                time.sleep(0.05)

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            time.sleep(1.5)
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(3)
            proxy.restore()
            restored_at = time.monotonic()
            assert wait_until(lambda: any(t > restored_at and r.status_code == 201 for t, r in replies), timeout=30)
            time.sleep(1)
        finally:
            stop.set()
            thread.join()
    finally:
        proxy.close()

    statuses = Counter(r.status_code for _, r in replies)
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[503] >= 1, "calls during the outage are refused"
    for _, reply in replies:
        if reply.status_code == 503:
            assert reply.json()["code"] == 503
    assert any(cut_at < t < restored_at for t, r in replies if r.status_code == 503)
    stored = {r.incident_id for r in rows(fresh_database, "SELECT incident_id FROM incidents.incidents")}
    acknowledged = {r.json()["incident_id"] for _, r in replies if r.status_code == 201}
    assert acknowledged <= stored, "every create that got a 201 is in the database"


# --------------------------------------------------------------------------- alert pipeline retries


def test_twenty_concurrent_retries_with_one_key_give_one_incident_one_notification(
    services, fresh_database, peers, tmp_path
):
    oncall, notifier = peers
    oncall.respond(200, ONCALL_REPLY, delay=0.3)  # keeps the first in flight while the others arrive
    service = start(services, fresh_database, peers, tmp_path, "service")
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: create(service, **{"Idempotency-Key": "alert-7f3e"}), range(20)))
    statuses = Counter(r.status_code for r in replies)
    assert set(statuses) <= {201, 409}, statuses
    assert {r.json()["incident_id"] for r in replies if r.status_code == 201} != set()
    assert len({r.json()["incident_id"] for r in replies if r.status_code == 201}) == 1
    # Retried once the first finished, the 409s get the same incident back.
    again = create(service, **{"Idempotency-Key": "alert-7f3e"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"

    assert len(rows(fresh_database, "SELECT id FROM incidents.incidents")) == 1
    assert len(oncall.requests_to("/api/v1/oncall/current")) == 1
    time.sleep(1)  # a duplicate notification, had there been one, has had time to go out
    assert len(notifier.requests_to(NOTIFY)) == 1


# --------------------------------------------------------------------------- a thousand due at once


def test_a_thousand_incidents_due_at_once_escalate_once_each_and_on_time(services, fresh_database, peers, tmp_path):
    _, notifier = peers
    check, timeout = 1.0, 30.0  # ESCALATION_CHECK_SECONDS, ESCALATION_TIMEOUT_MINUTES × 60
    env = {"ESCALATION_TIMEOUT_MINUTES": str(timeout / 60), "ESCALATION_CHECK_SECONDS": str(check)}
    for n in (1, 2):
        start(services, fresh_database, peers, tmp_path, f"replica{n}", **env)
    # A thousand open incidents created together, all due at one moment a few seconds from now.
    due_at = datetime.now(UTC) + timedelta(seconds=4)
    created_at = due_at - timedelta(seconds=timeout)
    incident_rows = [
        {"id": uuid.uuid4(), "incident_id": f"inc-{n:016x}", "title": "Storm", "service": "drill",
         "severity": "high", "status": "open", "created_at": created_at, "updated_at": created_at}
        for n in range(1000)
    ]
    with engine_for(fresh_database).begin() as conn:
        conn.execute(tables.incidents.insert(), incident_rows)

    def escalated() -> list:
        return rows(fresh_database, "SELECT incident_id, escalation_level, escalated_at FROM incidents.incidents"
                                    " WHERE escalation_level >= 1")

    assert wait_until(lambda: len(escalated()) == 1000, timeout=check + 5 + 30, every=0.5)
    levels = escalated()
    assert {r.escalation_level for r in levels} == {1}
    lateness = [(r.escalated_at - due_at).total_seconds() for r in levels]
    assert min(lateness) >= 0, "escalated before falling due"
    assert max(lateness) <= check + 5, f"the latest escalation came {max(lateness):.1f} s after it was due"

    # One page per incident for level 1, each notification once.
    assert wait_until(lambda: set(outbox_states(fresh_database)) == {"sent"}, timeout=30)
    pages = [r.body for r in notifier.requests_to(NOTIFY) if "[ESCALATION 1/3]" in r.body["message"]]
    assert Counter(page["incident_id"] for page in pages) == {r["incident_id"]: 1 for r in incident_rows}
    assert len({page["notification_id"] for page in pages}) == 1000

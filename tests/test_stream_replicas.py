"""The live feed under real gunicorn: two replicas of 2 gevent workers on one PostgreSQL. Every
follower of every replica gets every event once, in an exact order, whatever the order in which
transactions commit, across disconnects and a lost database connection.

One file past 300 lines: its cases share two running replicas and the followers that read them."""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from incident_app import migrate
from incident_app.feed.cursor import Cursor
from incident_app.settings import Settings
from tests.support.gunicorn import GunicornService
from tests.support.proxy import TcpProxy
from tests.support.stream import SseFollower

VALID = {"title": "Checkout 500s", "service": "checkout", "severity": "high"}
STREAM = "/api/v1/stream"


def service_env(database_url: str, oncall, notifier, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "ONCALL_SERVICE_URL": oncall.url,
            "NOTIFICATION_SERVICE_URL": notifier.url, "HTTP_CLIENT_TIMEOUT": "2", **extra}


@pytest.fixture(scope="module")
def feed_database(pg_database) -> str:
    url = pg_database()
    migrate.upgrade(Settings(database_url=url))
    return url


@pytest.fixture(scope="module")
def replicas(feed_database, _session_peers, tmp_path_factory):
    """Replicas A and B, 2 workers each, on one database."""
    oncall, notifier = _session_peers
    oncall.respond(200, {"primary": {"name": "Alice", "email": "alice@example.com"}})
    notifier.respond(200, {"status": "sent"})
    logs = tmp_path_factory.mktemp("replicas")
    started = [GunicornService(service_env(feed_database, oncall, notifier), workers=2,
                               log_path=logs / f"{name}.log").start() for name in ("a", "b")]
    yield started
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def db(feed_database):
    engine = sa.create_engine(feed_database)
    yield engine
    engine.dispose()


def create(replica: GunicornService, **changes) -> dict:
    response = requests.post(f"{replica.url}/api/v1/incidents", json={**VALID, **changes}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def patch(replica: GunicornService, incident_id: str, **body) -> dict:
    response = requests.patch(f"{replica.url}/api/v1/incidents/{incident_id}", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# An event written by hand, in a transaction the test holds open (T1).
ESCALATED = ("INSERT INTO incidents.incident_events (id, incident_id, type, actor, details, created_at)"
             " VALUES ({id}, %s, 'escalated', 'system', '{{\"level\": 1}}', now())")


def incident_pk(db: sa.Engine, incident_id: str):
    with db.connect() as conn:
        return conn.execute(sa.text("SELECT id FROM incidents.incidents WHERE incident_id = :i"),
                            {"i": incident_id}).scalar_one()


def positions(db: sa.Engine) -> list[str]:
    """Every event's cursor, in feed order, as the database holds them."""
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT xact_id, id FROM incidents.incident_events ORDER BY xact_id, id")).all()
    return [str(Cursor(*row)) for row in rows]


def after(cursors: list[str], mark: str) -> list[str]:
    return [c for c in cursors if Cursor.parse(c) > Cursor.parse(mark)]


def marked(follower: SseFollower, incident_id: str, event_type: str = "created") -> str:
    """Wait for the event of `incident_id` and return its cursor."""
    def seen(events):
        return any(e.data["incident_id"] == incident_id and e.type == event_type for e in events)
    events = follower.wait_for(seen)
    return next(e.cursor for e in events if e.data["incident_id"] == incident_id and e.type == event_type)


# --------------------------------------------------------------------------- across replicas


def test_a_follower_of_one_replica_sees_a_patch_through_the_other_within_a_second(replicas):
    a, b = replicas
    incident = create(b)
    follower = SseFollower(f"{a.url}{STREAM}?types=acknowledged")
    try:
        assert follower.retry == 3000
        patch(b, incident["incident_id"], status="acknowledged")
        committed = time.monotonic()
        (event,) = follower.wait_for(lambda events: len(events) >= 1, timeout=5)
        assert event.at - committed < 1.0
        assert event.type == "acknowledged" and event.data["incident_id"] == incident["incident_id"]
        assert event.data["incident"]["status"] == "acknowledged"
        assert set(event.data) == {"cursor", "type", "incident_id", "created_at", "actor", "details", "incident"}
        assert event.cursor == event.data["cursor"]
    finally:
        follower.close()


def test_ten_followers_get_every_event_of_200_mixed_writes_exactly_once(replicas, db):
    a, b = replicas
    followers = [SseFollower(f"{service.url}{STREAM}") for service in (a, b) * 5]
    try:
        start = create(a)["incident_id"]
        mark = marked(followers[0], start)
        for follower in followers:
            assert marked(follower, start) == mark

        def write(index: int) -> None:
            service = replicas[index % 2]
            incident = create(service, title=f"write {index}", severity=random.choice(["low", "critical"]))
            other = replicas[(index + 1) % 2]
            if index % 3 == 0:
                patch(other, incident["incident_id"], status="acknowledged")
            if index % 3 == 1:
                patch(other, incident["incident_id"], note=f"note {index}", author="bob")
            if index % 5 == 0:
                patch(service, incident["incident_id"], status="resolved")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(120)))  # 120 creates and 80 patches: 200 writes
        expected = after(positions(db), mark)
        assert len(expected) > 400  # created, assigned and notified of each create, and the patches
        for follower in followers:
            follower.wait_for(lambda events, last=expected[-1]: last in {e.cursor for e in events}, timeout=15)
        for follower in followers:
            received = after(follower.cursors, mark)
            assert received == expected  # every event, once, in feed order
    finally:
        for follower in followers:
            follower.close()


def test_resuming_with_last_event_id_gets_exactly_the_events_missed(replicas):
    a, b = replicas
    incident = create(a)["incident_id"]
    follower = SseFollower(f"{a.url}{STREAM}?types=note_added")
    patch(a, incident, note="before", author="carol")
    follower.wait_for(lambda events: len(events) == 1)
    last = follower.last_event_id
    follower.close()
    for index in range(50):
        patch(replicas[index % 2], incident, note=f"missed {index}")
    resumed = SseFollower(f"{b.url}{STREAM}?types=note_added", headers={"Last-Event-ID": last})
    try:
        events = resumed.wait_for(lambda events: len(events) >= 50)
        time.sleep(0.5)  # anything beyond the 50 would arrive with them
        assert [e.data["details"]["content"] for e in resumed.events] == [f"missed {i}" for i in range(50)]
        again = SseFollower(f"{a.url}{STREAM}?types=note_added&after={events[24].cursor}")
        try:
            again.wait_for(lambda events: len(events) >= 25)
            assert [e.cursor for e in again.events] == [e.cursor for e in events[25:]]
        finally:
            again.close()
    finally:
        resumed.close()


def test_filters_select_by_service_severity_and_type(replicas):
    a, b = replicas
    follower = SseFollower(f"{a.url}{STREAM}?service=payments&severity=critical&types=created,resolved")
    try:
        create(b, service="payments", severity="low")
        create(b, service="search", severity="critical")
        wanted = create(b, service="payments", severity="critical")["incident_id"]
        patch(a, wanted, status="resolved")
        events = follower.wait_for(lambda events: len(events) >= 2)
        time.sleep(0.5)
        assert [(e.type, e.data["incident_id"]) for e in follower.events] == [("created", wanted), ("resolved", wanted)]
        assert events[1].data["incident"]["status"] == "resolved"
    finally:
        follower.close()


# --------------------------------------------------------------------------- commits out of order


@pytest.fixture
def interleaving(replicas, feed_database, db):
    """An incident made through A, its primary key, a follower of A, and T1: a transaction of the
    test's own, beside the service's."""
    incident = create(replicas[0])
    follower = SseFollower(f"{replicas[0].url}{STREAM}?types=note_added,escalated")
    t1 = psycopg2.connect(make_url(feed_database).set(drivername="postgresql").render_as_string(hide_password=False))
    yield incident, incident_pk(db, incident["incident_id"]), follower, t1
    t1.close()
    follower.close()


def test_an_event_whose_id_was_taken_first_but_committed_last_is_still_delivered_once(replicas, interleaving):
    # T1 takes event id n and writes it only after T2 (id n+1, through the service) has committed
    # and been delivered: ids commit out of order. A follower at "after n+1" must still get n.
    b = replicas[1]
    incident, pk, follower, t1 = interleaving
    cur = t1.cursor()
    cur.execute("SELECT nextval(pg_get_serial_sequence('incidents.incident_events', 'id'))")
    (taken,) = cur.fetchone()
    patch(b, incident["incident_id"], note="T2")  # T2: a later id, committed first
    (t2_event,) = follower.wait_for(lambda events: len(events) == 1)
    assert t2_event.data["details"]["content"] == "T2"
    t2_cursor = Cursor.parse(t2_event.cursor)
    assert t2_cursor.event_id > taken  # id order is not commit order
    resumed = SseFollower(f"{b.url}{STREAM}?types=note_added,escalated", headers={"Last-Event-ID": t2_event.cursor})
    cur.execute(ESCALATED.format(id="%s"), (taken, pk))
    t1.commit()  # T1 commits last
    for reader in (follower, resumed):
        reader.wait_for(lambda events: any(e.type == "escalated" for e in events))
    time.sleep(0.5)
    assert [e.type for e in follower.events] == ["note_added", "escalated"]
    assert [e.type for e in resumed.events] == ["escalated"]  # after n+1, and still n: once
    assert Cursor.parse(resumed.events[0].cursor).event_id == taken
    resumed.close()


def test_a_later_transaction_is_held_back_until_an_older_open_one_ends(replicas, interleaving):
    # T1 writes its event first (older transaction, smaller id) and stays open while T2 commits:
    # T2's event waits for T1, so the feed never moves past an event that could still commit.
    b = replicas[1]
    incident, pk, follower, t1 = interleaving
    cur = t1.cursor()
    cur.execute(ESCALATED.format(id="DEFAULT"), (pk,))
    patch(b, incident["incident_id"], note="T2")
    time.sleep(1.0)
    assert follower.events == []  # T2 committed, but T1 may still commit before it in the feed
    t1.commit()
    events = follower.wait_for(lambda events: len(events) == 2, timeout=5)
    assert [e.type for e in events] == ["escalated", "note_added"]


# --------------------------------------------------------------------------- WebSocket


def test_websocket_sends_the_first_versions_messages_with_cursor_and_type(replicas):
    import websocket

    a, b = replicas
    ws = websocket.create_connection(f"ws://127.0.0.1:{a.port}/ws/incidents", timeout=10)
    try:
        ws.send("ignored")
        ws.ping("still there?")
        incident = create(b)["incident_id"]
        patch(b, incident, status="acknowledged")
        messages = []
        while not any(m["data"]["type"] == "acknowledged" for m in messages):
            import json

            messages.append(json.loads(ws.recv()))
        mine = [m for m in messages if m["data"]["incident_id"] == incident]
        assert mine[0] == {"event": "incident_created", "data": {
            "incident_id": incident, "status": mine[0]["data"]["status"], "severity": "high",
            "service": "checkout", "cursor": mine[0]["data"]["cursor"], "type": "created"}}
        assert {m["event"] for m in mine[1:]} == {"incident_updated"}
        assert mine[-1]["data"]["status"] == "acknowledged"
        created = mine[0]["data"]["cursor"]
    finally:
        ws.close()
    resumed = websocket.create_connection(f"ws://127.0.0.1:{b.port}/ws/incidents?after={created}", timeout=10)
    try:
        import json

        replayed = [json.loads(resumed.recv()) for _ in range(len(mine) - 1)]
        assert [m["data"]["cursor"] for m in replayed if m["data"]["incident_id"] == incident] == [
            m["data"]["cursor"] for m in mine[1:]]
    finally:
        resumed.close()


def test_websocket_with_a_bad_cursor_is_refused_before_the_upgrade(replicas):
    a, _ = replicas
    response = requests.get(f"{a.url}/ws/incidents?after=nope", timeout=5, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert response.status_code == 422
    assert response.json()["errors"]["after"]


# --------------------------------------------------------------------------- metrics


def metric(service: GunicornService, name: str, transport: str) -> float:
    text = requests.get(f"{service.url}/metrics", timeout=5).text
    match = re.search(rf'^{name}\{{transport="{transport}"\}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name}{{transport={transport}}} missing"
    return float(match.group(1))


def test_followers_gauge_sums_every_worker_and_events_sent_counts(replicas):
    a, b = replicas
    baseline = metric(a, "stream_followers", "sse")
    sent_before = metric(a, "stream_events_sent_total", "sse")
    followers = [SseFollower(f"{a.url}{STREAM}") for _ in range(6)]
    try:
        deadline = time.monotonic() + 5
        while metric(a, "stream_followers", "sse") != baseline + 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(4):  # whichever worker answers
            assert metric(a, "stream_followers", "sse") == baseline + 6
        incident = create(b)["incident_id"]
        for follower in followers:
            marked(follower, incident)
        assert metric(a, "stream_events_sent_total", "sse") >= sent_before + 6
        assert metric(a, "stream_followers", "websocket") >= 0
    finally:
        for follower in followers:
            follower.close()
    deadline = time.monotonic() + 20  # a client gone is noticed at the next write (heartbeat at most)
    while metric(a, "stream_followers", "sse") != baseline and time.monotonic() < deadline:
        create(a)
        time.sleep(0.2)
    assert metric(a, "stream_followers", "sse") == baseline


# --------------------------------------------------------------------------- limits


def test_a_follower_that_never_reads_is_disconnected_and_holds_nobody_back(replicas, db):
    a, b = replicas
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", a.port))
    stuck.sendall(f"GET {STREAM} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    reader = SseFollower(f"{a.url}{STREAM}?types=acknowledged")
    try:
        incident = create(b)
        pk = incident_pk(db, incident["incident_id"])
        with db.begin() as conn:
            # ~12 MB of events: more than the sockets' buffers (4 MiB at most here) and the follower's
            # 1,000-event queue can hold.
            conn.execute(sa.text(
                "INSERT INTO incidents.incident_events (incident_id, type, actor, details, created_at)"
                " SELECT :pk, 'note_added', 'load', jsonb_build_object('text', repeat('x', 3000)), now()"
                " FROM generate_series(1, 4000)"), {"pk": pk})
        started = time.monotonic()
        patch(b, incident["incident_id"], status="acknowledged")
        assert time.monotonic() - started < 2.0  # the writer is not held back (generous bound)
        (event,) = reader.wait_for(lambda events: len(events) == 1, timeout=15)
        assert event.at - started < 5.0  # nor is another follower, once the burst is relayed
        # The stuck one was disconnected: what its socket holds ends with the server's close.
        stuck.settimeout(5)
        total, deadline = 0, time.monotonic() + 30
        while (chunk := stuck.recv(1 << 16)) and time.monotonic() < deadline:
            total += len(chunk)
        assert chunk == b"", "still connected"
        assert total < 4000 * 3000
    finally:
        stuck.close()
        reader.close()


# --------------------------------------------------------------------------- database connection lost


def test_followers_resume_with_nothing_lost_when_the_database_connection_is_cut(
    feed_database, replicas, _session_peers, tmp_path
):
    oncall, notifier = _session_peers
    url = make_url(feed_database)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = GunicornService(
        service_env(url.set(port=proxy.port).render_as_string(hide_password=False), oncall, notifier),
        workers=2, log_path=tmp_path / "proxied.log",
    ).start()
    _, b = replicas
    followers = [SseFollower(f"{proxied.url}{STREAM}?types=created") for _ in range(4)]
    try:
        first = create(b)["incident_id"]
        for follower in followers:
            marked(follower, first)
        proxy.cut()  # the proxied replica's listening and pooled connections all drop
        during = [create(b)["incident_id"] for _ in range(20)]  # written through the other replica
        time.sleep(1.0)
        proxy.restore()
        last = create(b)["incident_id"]
        for follower in followers:
            follower.wait_for(lambda events: any(e.data["incident_id"] == last for e in events), timeout=20)
            assert [e.data["incident_id"] for e in follower.events] == [first, *during, last]
    finally:
        for follower in followers:
            follower.close()
        proxied.stop()
        proxy.close()


# --------------------------------------------------------------------------- shutdown


def test_sigterm_ends_the_streams_at_once(feed_database, _session_peers, tmp_path):
    oncall, notifier = _session_peers
    service = GunicornService(service_env(feed_database, oncall, notifier), workers=2,
                              log_path=tmp_path / "service.log").start()
    followers = [SseFollower(f"{service.url}{STREAM}") for _ in range(4)]
    ws_thread_result = {}

    def websocket_follower() -> None:
        import websocket

        ws = websocket.create_connection(f"ws://127.0.0.1:{service.port}/ws/incidents", timeout=30)
        try:
            while True:
                ws.recv()
        except Exception as exc:  # closed by the server
            ws_thread_result["ended"] = type(exc).__name__
        finally:
            ws.close()

    thread = threading.Thread(target=websocket_follower, daemon=True)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    service.stop()  # SIGTERM; graceful_timeout is 20 s
    stopped = time.monotonic() - started
    assert stopped < 8, f"shutdown waited {stopped:.1f}s on open streams"
    for follower in followers:
        deadline = time.monotonic() + 5
        while not follower.ended and time.monotonic() < deadline:
            time.sleep(0.05)
        assert follower.ended
    thread.join(5)
    assert "ended" in ws_thread_result

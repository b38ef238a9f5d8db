"""The feed's NOTIFY on PostgreSQL (migration 0013, incident_app/feed/notifier.py): the service's
writes leave it to their process, which sends it from a connection of its own once they have
committed; any other session still notifies from its own commit."""

from __future__ import annotations

import json
import logging
import select
import time
from datetime import UTC, datetime

import psycopg2
import pytest
import sqlalchemy as sa

from incident_app.feed.hub import CHANNEL, FeedFilters
from incident_app.feed.notifier import NOTICE, CommitNotifier
from tests.support.incidents import VALID
from tests.support.reliability import wait_until

postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


class Listener:
    """A plain LISTEN connection: the notifications of the feed's channel and who sent them."""

    def __init__(self, url: str) -> None:
        dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.connection = psycopg2.connect(dsn)
        self.connection.autocommit = True
        self.connection.cursor().execute(f"LISTEN {CHANNEL}")

    def senders(self, *, at_least: int = 1, within: float = 5.0) -> list[int]:
        """The backend pids of the notifications received: at least `at_least` of them, waiting at
        most `within` seconds, then whatever else comes in the next tenth of a second."""
        pids: list[int] = []
        deadline = time.monotonic() + within
        settle = None
        while True:
            now = time.monotonic()
            if len(pids) >= at_least:
                settle = settle or now + 0.1
            until = settle if settle is not None else deadline
            if now >= until:
                return pids
            if select.select([self.connection], [], [], until - now)[0]:
                self.connection.poll()
                pids += [notify.pid for notify in self.connection.notifies]
                self.connection.notifies.clear()

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def listener(database_url):
    listening = Listener(database_url)
    yield listening
    listening.close()


def backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()


@postgresql_only
def test_the_services_writes_are_notified_by_its_own_connection_after_they_commit(app, client, listener):
    created = client.post("/api/v1/incidents", json=VALID)
    assert created.status_code == 201
    incident_id = created.get_json()["incident_id"]
    assert client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged"}).status_code == 200
    notifier = app.extensions["feed"].notifier
    senders = listener.senders()
    # Every notification came from the notifier's one connection: none from a write's own commit.
    assert set(senders) == {backend_pid(notifier.engine)}
    assert 1 <= notifier.sent <= 2 + 2  # the create's writes and the acknowledge: at most one each
    with app.extensions["engine"].connect() as conn:
        setting = conn.exec_driver_sql("SELECT current_setting('incident_feed.notify')").scalar_one()
        assert setting == "after_commit"
        assert backend_pid(notifier.engine) != conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()


@postgresql_only
def test_the_relay_reads_nothing_while_nobody_follows_and_a_follower_from_now_gets_what_follows(app, client):
    """With nobody following, a notification wakes the relay and it sends no statement (it used to
    read where "now" is on every one); the first follower reads it as it joins."""
    hub = app.extensions["feed"]
    statements: list[str] = []
    sa.event.listen(hub.listen_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    hub.start()
    assert wait_until(lambda: hub.wakes >= 1, timeout=5, every=0.01)  # listening
    statements.clear()
    wakes = hub.wakes
    before = client.post("/api/v1/incidents", json=VALID).get_json()["incident_id"]
    assert wait_until(lambda: hub.wakes > wakes, timeout=5, every=0.01)
    assert statements == []

    follower = hub.follow(FeedFilters(), None)
    try:
        after = client.post("/api/v1/incidents", json=VALID).get_json()["incident_id"]
        received: list[dict] = []
        deadline = time.monotonic() + 5
        for batch in follower.batches(heartbeat=0.1):
            received += [json.loads(event.text) for event in batch]
            if {"created", "notified"} <= {e["type"] for e in received} or time.monotonic() > deadline:
                break
    finally:
        hub.leave(follower)
    assert {e["incident_id"] for e in received} == {after} != {before}
    assert {"created", "notified"} <= {e["type"] for e in received}
    assert statements  # the relay read the follower's events


@postgresql_only
def test_a_write_of_the_services_session_raises_the_notice_and_queues_no_notification(app, client, listener):
    assert client.post("/api/v1/incidents", json=VALID).status_code == 201
    listener.senders()  # the create's own
    engine = app.extensions["engine"]
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        with conn.begin():
            conn.exec_driver_sql(
                "INSERT INTO incidents.incident_events (incident_id, type, actor, details, created_at)"
                " SELECT id, 'note_added', 'test', '{}', now() FROM incidents.incidents LIMIT 1")
            assert raw.notices.feed_written and not any(NOTICE in notice for notice in raw.notices)
        # Committed: under 0005's trigger this commit itself would have notified.
        assert listener.senders(within=0.5) == []
        sent = app.extensions["feed"].notifier.sent
    # Back in the pool: its process notifies, from its own connection.
    senders = listener.senders()
    assert set(senders) == {backend_pid(app.extensions["feed"].notifier.engine)}
    assert app.extensions["feed"].notifier.sent == sent + 1


@postgresql_only
def test_a_session_that_is_not_the_services_still_notifies_from_its_own_commit(client, database_url, listener):
    assert client.post("/api/v1/incidents", json=VALID).status_code == 201
    listener.senders()
    by_hand = sa.create_engine(database_url)
    try:
        with by_hand.begin() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            conn.execute(sa.text(
                "INSERT INTO incidents.incident_events (incident_id, type, actor, details, created_at)"
                " SELECT id, 'note_added', 'psql', '{}', :now FROM incidents.incidents LIMIT 1"),
                {"now": datetime.now(UTC)})
        assert listener.senders() == [pid]
    finally:
        by_hand.dispose()


@postgresql_only
def test_a_notifier_that_cannot_reach_the_database_logs_and_goes_on(database_url, caplog):
    unreachable = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none", pool_size=1,
                                   connect_args={"connect_timeout": 1})
    notifier = CommitNotifier(unreachable, every=0.01)
    try:
        with caplog.at_level(logging.WARNING, logger="incident_app.feed.notifier"):
            for _ in range(2):
                notifier.wake()
                deadline = time.monotonic() + 5
                while notifier._wanted.is_set():
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            deadline = time.monotonic() + 5
            while len(caplog.records) < 2:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.01)
        assert "live feed: could not notify (OperationalError)" in caplog.text
        assert notifier.sent == 0 and notifier._thread.is_alive()
    finally:
        notifier.close()
    assert not notifier._thread.is_alive()

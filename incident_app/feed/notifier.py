"""Each process's NOTIFY for the feed events it committed, sent after their commits (PostgreSQL).

A NOTIFY inside a write makes its commit take PostgreSQL's one lock for the notification queue
and hold it through the WAL flush, so that every write recording an event committed after the
previous one had flushed (an acknowledge waited on it more than on anything else under load). The
service's sessions therefore say at connect that they notify after commit (`NOTIFY_AFTER_COMMIT`), and
the feed's trigger (migration 0013) then raises a NOTICE instead of notifying. When a connection
that was told so returns to the pool, its transaction has ended; the process's notifier then sends
one NOTIFY, on a connection of its own, for every write of the moment: at most one every
`NOTIFY_EVERY`, never two at once, each in a transaction that does not wait for its WAL flush (a
notification lost with a crash is caught up by every relay's idle read, feed/hub.IDLE_READ_EVERY).

A transaction that was rolled back wakes the relays for nothing, which costs them one read.
Sessions that are not the service's (psql, a script) still notify from their own commit.

Threads and events from the standard library: under gunicorn's gevent workers they are greenlets.
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incident_app.feed.hub import CHANNEL

log = logging.getLogger(__name__)

SESSION_SETTING = "incident_feed.notify"  # migration 0013's trigger reads it
NOTICE = "incident_feed: notify after commit"  # what that trigger raises instead of notifying
# Seconds. At one every 10 ms, sending them was 2.7% of the workers' samples during creates
# (py-spy); at most 20 a second per worker cost a fifth of that many, for at most 50 ms more
# before an event leaves (the contract allows a second).
NOTIFY_EVERY = 0.05
# Its own commit need not wait for the disk: the events it announces are committed already.
_NOTIFY = f"SELECT set_config('synchronous_commit', 'off', true), pg_notify('{CHANNEL}', '')"
# libpq's startup options of a session whose feed NOTIFY its process sends after its commits
# (db.create_engine's `options`): set as each connection opens, without a round trip of their own.
NOTIFY_AFTER_COMMIT = f" -c {SESSION_SETTING}=after_commit -c client_min_messages=notice"


class CommitNotifier:
    """Watches an engine's connections and notifies the feed's channel after they wrote to it."""

    def __init__(self, engine: Engine, *, every: float = NOTIFY_EVERY) -> None:
        self.engine = engine  # its own (one connection): never waits for the pool of the requests
        self.every = every
        self.sent = 0
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, engine: Engine) -> None:
        """Notify after the writes of `engine`, whose sessions were opened with NOTIFY_AFTER_COMMIT.
        Call before its first connection."""

        @sa.event.listens_for(engine, "connect")
        def _connected(dbapi_connection, _record) -> None:
            dbapi_connection.notices = _Notices()

        @sa.event.listens_for(engine, "checkin")
        def _checked_in(dbapi_connection, _record) -> None:
            notices = getattr(dbapi_connection, "notices", None)  # None: an invalidated connection
            if isinstance(notices, _Notices) and notices.feed_written:
                notices.feed_written = False
                self.wake()

    def wake(self) -> None:
        """A write to the feed has committed (or rolled back): notify soon."""
        self._wanted.set()
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="feed-notifier", daemon=True)
                    self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(5)
        self.engine.dispose()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stop.is_set():
                return
            self._wanted.clear()  # what commits from here on wants the next one
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql(_NOTIFY)
                self.sent += 1
            except sa.exc.SQLAlchemyError as exc:
                # The relays read on by themselves (their idle read, or their reconnect).
                log.warning("live feed: could not notify (%s)", exc.__class__.__name__)
            self._stop.wait(self.every)


class _Notices(list):
    """A session's notices (psycopg2 appends each one as it arrives, SQLAlchemy logs and clears
    them after every statement), but the trigger's: that one only marks the session."""

    feed_written = False

    def append(self, notice: str) -> None:
        if NOTICE in notice:
            self.feed_written = True
        else:
            super().append(notice)

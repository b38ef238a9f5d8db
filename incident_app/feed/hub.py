"""Each process's relay of the live feed to its own followers.

One listening connection per process (LISTEN incident_feed, its own, never the pool's): a
notification only says "the timeline changed"; the relay then reads what changed from the
database in batches, in feed order, and hands each follower what matches its filters. A follower
that comes with a cursor first replays what it missed, one pooled connection per batch, returned
before anything is sent, then takes over from the relay with no gap and no repeat (see `Follower`).
When the listening connection drops, the relay reconnects and reads on from where it stood, so
every follower catches up. NOTIFY is neither durable nor large: nothing rides on its payload.

Threads and events from the standard library: under gunicorn's gevent workers they are greenlets.

One module past 300 lines: the relay's position and each follower's cursor hand over to each other
(no gap, no repeat), and that invariant reads best in one place.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import select
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from incident_app.feed.cursor import Cursor
from incident_app.feed.document import event_head, event_text, websocket_message
from incident_app.repository import feed as feed_queries
from incident_app.transactions import reading

if TYPE_CHECKING:
    from incident_app.feed.notifier import CommitNotifier

log = logging.getLogger(__name__)

CHANNEL = "incident_feed"  # migration 0005 NOTIFYs it
BATCH = 500
QUEUE_LIMIT = 1000  # events waiting for one follower before it is disconnected (contract 7)
# Seconds. Without a notification the relay still reads this often (a notification lost with a
# connection, a change made by hand); an event held back by an older open transaction is looked
# at again after HELD_RETRY, since no notification comes when a transaction that wrote no event ends.
IDLE_READ_EVERY = 5.0
HELD_RETRY = 0.05
RECONNECT_MAX = 5.0
RELAY_START_WAIT = 3.0
COALESCE_SECONDS = 0.02
# A follower writes to its socket at most this often: the first event after a quiet spell goes out
# at once, the events of a busy moment leave together. One write per follower per relay read (50 a
# second under steady writes) was most of a busy worker's time with a thousand followers; at five a
# second it is a tenth of that, and the events still arrive well within the contract's second.
SEND_INTERVAL = 0.2
# SQLite has no LISTEN: its one process reads this often.
SQLITE_READ_EVERY = 0.2


@dataclass(frozen=True)
class FeedFilters:
    service: str | None = None
    severity: str | None = None
    types: frozenset[str] | None = None

    def match(self, event: FeedEvent) -> bool:
        return ((self.types is None or event.type in self.types)
                and (self.service is None or event.service == self.service)
                and (self.severity is None or event.severity == self.severity))


class FeedEvent:
    """One event as every follower of a process sends it, from a row of repository.feed. Its texts
    are made on first use, once for every follower (an event no follower wants costs no JSON); its
    incident is decoded only for a filter or a WebSocket message that needs it."""

    def __init__(self, row: Any) -> None:
        mapping = row._mapping
        self._row = mapping
        self.cursor = Cursor(mapping["event_xact_id"], mapping["event_id"])
        self.type: str = mapping["event_type"]

    @functools.cached_property
    def incident(self) -> dict[str, Any]:
        """The incident as it stood after the change, as a list item's JSON values."""
        return json.loads(self._row["incident"])

    @property
    def service(self) -> str:
        return self.incident["service"]

    @property
    def severity(self) -> str:
        return self.incident["severity"]

    @functools.cached_property
    def _head(self) -> dict[str, Any]:
        event = {name: self._row[f"event_{name}"] for name in feed_queries.EVENT_COLUMNS}
        return event_head(event, self._row["incident_id"])

    @functools.cached_property
    def text(self) -> str:
        """The event's JSON text, as the stream and the webhooks send it."""
        return event_text(self._head, self._row["incident"])

    @functools.cached_property
    def server_sent_event(self) -> bytes:
        return f"id: {self._head['cursor']}\nevent: {self.type}\ndata: {self.text}\n\n".encode()

    @functools.cached_property
    def websocket_text(self) -> str:
        return json.dumps(websocket_message({**self._head, "incident": self.incident}))


def feed_events(rows: Sequence[Any]) -> list[FeedEvent]:
    """The feed's events of rows read by repository.feed."""
    return [FeedEvent(row) for row in rows]


class Overflowed(Exception):
    """The follower let QUEUE_LIMIT events wait: it is disconnected and resumes with its cursor."""


class Follower:
    """One client following the feed. Iterate `batches()`: each item a list of FeedEvents, or
    an empty list when `heartbeat` seconds passed with nothing to send.

    Gap-free resume: the follower joins the relay first (from then on the relay queues every event
    after the relay's position), then replays from its own cursor up to what the database lets it
    read. The replay's horizon is never behind the relay's, so whatever it missed lies in one of
    the two; queued events it already replayed (at or before its cursor) are skipped."""

    def __init__(self, hub: FeedHub, filters: FeedFilters, after: Cursor | None) -> None:
        self.hub = hub
        self.filters = filters
        self.cursor = after
        self.replay_from = after
        self._pending: collections.deque[FeedEvent] = collections.deque()
        self._wake = threading.Event()
        self._sent_at = 0.0  # monotonic time of the last batch handed out
        self.ended: str | None = None  # why it ended: "overflow", "stopping"

    # called by the relay, which never blocks on a follower
    def offer(self, matching: list[FeedEvent]) -> None:
        """Queue the relay's batch as this follower's filters see it (the relay matched it once for
        every follower with the same filters)."""
        if not matching or self.ended:
            return
        if len(self._pending) + len(matching) > self.hub.queue_limit:
            self._pending.clear()
            self.end("overflow")
            return
        self._pending.extend(matching)
        self._wake.set()

    def end(self, reason: str) -> None:
        self.ended = self.ended or reason
        self._wake.set()

    def batches(self, heartbeat: float) -> Iterator[list[FeedEvent]]:
        try:
            if self.replay_from is not None:
                yield from self._replay(self.replay_from)
            while True:
                if self.ended:
                    if self.ended == "overflow":
                        raise Overflowed()
                    return
                if not self._wake.wait(heartbeat):
                    yield []
                    continue
                hold = self._sent_at + self.hub.send_interval - time.monotonic()
                if hold > 0:
                    time.sleep(hold)  # what arrives meanwhile goes out in this write
                self._wake.clear()
                batch = self._take()
                if batch:
                    self._sent_at = time.monotonic()
                    yield batch
        finally:
            self.hub.leave(self)

    def _take(self) -> list[FeedEvent]:
        batch = []
        while self._pending:
            event = self._pending.popleft()
            if self.cursor is not None and event.cursor <= self.cursor:
                continue  # replayed already
            self.cursor = event.cursor
            batch.append(event)
        return batch

    def _replay(self, after: Cursor) -> Iterator[list[FeedEvent]]:
        while True:
            page = self.hub.read_page(after)  # its connection is back in the pool before we send
            if not page:
                return
            after = page[-1].cursor
            self.cursor = max(self.cursor, after) if self.cursor else after
            matching = [event for event in page if self.filters.match(event)]
            if matching:
                yield matching
            if len(page) < self.hub.batch:
                return


class FeedHub:
    def __init__(
        self, *, engine: Engine, listen_engine: Engine | None, notifier: CommitNotifier | None = None,
        batch: int = BATCH, queue_limit: int = QUEUE_LIMIT, send_interval: float = SEND_INTERVAL,
    ) -> None:
        self.engine = engine
        self.listen_engine = listen_engine  # None on SQLite
        self.notifier = notifier  # the process's writes' NOTIFY (feed/notifier.py), closed with the hub
        self.batch = batch
        self.queue_limit = queue_limit
        self.send_interval = send_interval
        self.cursor: Cursor | None = None  # the relay's position: every event up to it was relayed
        self._followers: set[Follower] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._relaying = threading.Event()  # set while the relay listens (or polls, on SQLite)
        self._thread: threading.Thread | None = None
        self.stopping = False
        self.reconnects = 0
        self.wakes = 0  # the relay's looks at the database: on start, each notification, each idle read

    # ------------------------------------------------------------------ followers

    def follow(self, filters: FeedFilters, after: Cursor | None) -> Follower:
        """A new follower from `after` (None: from now). Starts the relay on first use."""
        if self.stopping:
            raise RuntimeError("the feed is stopping")
        now = self._now() if self.cursor is None else None
        self.start()
        # A follower joining a relay still connecting would wait for its first read: let it connect.
        self._relaying.wait(RELAY_START_WAIT)
        while True:
            with self._lock:
                # The relay lets go of its position while nobody follows (_relay_available): the
                # first follower of a moment gives it one, read before taking the lock.
                if self.cursor is None and now is not None:
                    self.cursor = now
                if self.cursor is not None:
                    follower = Follower(self, filters, after if after is not None else self.cursor)
                    follower.replay_from = after
                    self._followers.add(follower)
                    return follower
            now = self._now()

    def _now(self) -> Cursor:
        # "From now" is now, not when the relay's connection is up (a database down: a 503 here).
        with reading(self.engine) as conn:
            return feed_queries.head(conn)

    def leave(self, follower: Follower) -> None:
        with self._lock:
            self._followers.discard(follower)

    @property
    def follower_count(self) -> int:
        return len(self._followers)

    def read_page(self, after: Cursor) -> list[FeedEvent]:
        with reading(self.engine) as conn:
            page = feed_queries.read_after(conn, after, limit=self.batch)
        return feed_events(page.rows)

    # ------------------------------------------------------------------ the relay

    def start(self) -> None:
        """Start the relay (the gunicorn worker does at boot; otherwise the first follower)."""
        with self._lock:
            if self._thread is None and not self.stopping:
                self._thread = threading.Thread(target=self._run, name="feed-relay", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End every stream now (a worker shutting down: clients reconnect to another)."""
        self.stopping = True
        self._stop.set()
        with self._lock:
            followers = list(self._followers)
        for follower in followers:
            follower.end("stopping")

    def close(self) -> None:
        """Stop, and let go of the listening connection (an app torn down)."""
        self.stop()
        if self._thread is not None:
            self._thread.join(5)
        if self.listen_engine is not None:
            self.listen_engine.dispose()
        if self.notifier is not None:
            self.notifier.close()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                if self.listen_engine is None:
                    self._relay_polling()
                else:
                    self._relay_listening()
                delay = 0.5
            except (sa.exc.SQLAlchemyError, OSError) as exc:
                self._relaying.clear()
                # The database went away: read on from the relay's cursor once it is back.
                log.warning("live feed: database unavailable (%s); reconnecting", exc.__class__.__name__)
                self.reconnects += 1
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    def _relay_polling(self) -> None:
        while not self._stop.is_set():
            with reading(self.engine) as conn:
                self._relay_available(conn)
            self._relaying.set()
            self._stop.wait(SQLITE_READ_EVERY)

    def _relay_listening(self) -> None:
        with self.listen_engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            conn.exec_driver_sql(f"LISTEN {CHANNEL}")
            while not self._stop.is_set():
                held = self._relay_available(conn)
                self.wakes += 1
                self._relaying.set()
                self._wait_for_notification(raw, HELD_RETRY if held else IDLE_READ_EVERY)
                # Notifications of the next moment join this read: under a stream of writes each
                # follower gets one batch per interval, not one write to its socket per commit.
                self._stop.wait(COALESCE_SECONDS)

    def _wait_for_notification(self, raw: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            # Wake at least twice a second to notice a stop; gevent makes this select cooperative.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            readable, _, _ = select.select([raw], [], [], min(remaining, 0.5))
            if readable:
                raw.poll()  # raises when the connection died: the relay reconnects
                if raw.notifies:
                    raw.notifies.clear()
                    return

    def _relay_available(self, conn: Connection) -> bool:
        """Relay every deliverable event after the relay's cursor; whether later ones are held back."""
        with self._lock:
            if not self._followers:
                # Nobody to relay to: nothing is read or rendered, not even where "now" is (that was
                # a statement per notification, a fiftieth of a worker's time under writes). The
                # next follower reads it as it joins (follow); one with a cursor replays on its own.
                # While anyone follows, the cursor is set: follow sets it as it adds the first.
                self.cursor = None
                return False
        while True:
            page = feed_queries.read_after(conn, self.cursor, limit=self.batch)
            if page.rows:
                batch = feed_events(page.rows)
                with self._lock:
                    self.cursor = batch[-1].cursor
                    followers = list(self._followers)
                matching: dict[FeedFilters, list[FeedEvent]] = {}  # most followers share their filters
                for follower in followers:
                    filters = follower.filters
                    if filters not in matching:
                        matching[filters] = [event for event in batch if filters.match(event)]
                    follower.offer(matching[filters])
            if len(page.rows) < self.batch:
                return page.held

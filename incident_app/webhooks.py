"""Webhook deliveries (contract 7, "Webhooks"): every timeline event that matches a subscription is
a row of `webhook_deliveries`, written by the database in the event's transaction (migration 0007).
The sender claims due rows as the notification outbox does (repository/outbox.claim_due: SKIP LOCKED,
a lease, the same backoff and the same 24 hours), POSTs each as its feed event, signed per the
Standard Webhooks specification (the `standardwebhooks` package), and records the outcome.

Its own loop, apart from the notifications': a slow receiver delays neither them nor the API. Each
process keeps at most PER_WEBHOOK_IN_FLIGHT attempts in flight per subscription, so a dead receiver
holds a few slots while the others' rows go on. Its own HTTP client too (peers/receivers.py), whose
host lookups run on threads of their own: a receiver whose DNS hangs holds no peer call either.
"""

from __future__ import annotations

import base64
import collections
import logging
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Connection, Engine, Row
from standardwebhooks.webhooks import Webhook

from incident_app.feed.hub import feed_events
from incident_app.loop_thread import LoopThread
from incident_app.metrics import IncidentMetrics
from incident_app.outbox import GIVE_UP_AFTER, retry_wait
from incident_app.peers.receivers import ReceiverClient
from incident_app.peers.resolver import HostResolver
from incident_app.repository import outbox as queue
from incident_app.repository import webhooks as repo
from incident_app.tables import webhook_deliveries
from incident_app.transactions import single_statement, transaction

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the specification asks for 24 to 64
MAX_REPLY_BYTES = 64 << 10
PER_WEBHOOK_IN_FLIGHT = 8  # per process and subscription
IN_FLIGHT = 64  # per process, all subscriptions together
CLAIM_BATCH = 64
# Finished deliveries are kept this long (the webhook's last_delivery_at and last_status read them).
KEEP_FINISHED = timedelta(days=7)
# Seconds between looks for due rows when nothing wakes the loop sooner (a finished attempt does).
POLL_EVERY = 0.2


def new_secret() -> str:
    """`whsec_` and the base64 of random bytes, as the Standard Webhooks specification writes a secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def receiver_client(
    *, timeout: float, in_flight: int, resolver: HostResolver | None = None, ca_certs: str | None = None
) -> ReceiverClient:
    """The sender's HTTP client: replies read up to 64 KiB, as many connections per host as attempts in flight."""
    return ReceiverClient(timeout=timeout, max_reply_bytes=MAX_REPLY_BYTES, connections_per_host=in_flight,
                          resolver=resolver, ca_certs=ca_certs)


@dataclass(frozen=True)
class Attempt:
    """A claimed delivery, ready to go: its body (rendered at the first attempt, then kept) and target."""

    delivery: Row
    body: str
    url: str
    secret: str

    def headers(self, at: datetime) -> dict[str, str]:
        message_id = str(self.delivery.id)
        return {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            # The wall clock, whatever the service's clock says: receivers refuse a timestamp 5 minutes off.
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": Webhook(self.secret).sign(message_id, at, self.body),
        }


class WebhookSender:
    def __init__(
        self, *, engine: Engine, timeout: float, metrics: IncidentMetrics, clock: Callable[[], datetime],
        lease: timedelta, per_webhook: int = PER_WEBHOOK_IN_FLIGHT, in_flight: int = IN_FLIGHT,
        client: ReceiverClient | None = None,
    ) -> None:
        self.engine = engine
        self.client = client or receiver_client(timeout=timeout, in_flight=in_flight)
        self.timeout = timeout
        self.metrics = metrics
        self.clock = clock
        self.lease = lease  # longer than one attempt can take
        self.per_webhook = per_webhook
        self.in_flight = in_flight
        self._busy: collections.Counter[uuid.UUID] = collections.Counter()
        self._outcomes: list[tuple[dict, bool, bool]] = []  # attempts ended, not yet recorded
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._loop = LoopThread("webhook-deliveries", self.run, wake=self._wake.set)

    # ------------------------------------------------------------------ one attempt

    def attempt(self, attempt: Attempt, *, now: datetime | None = None) -> bool:
        """POST it once; its outcome (as of `now`, default: when the reply came) waits to be recorded
        with the others that ended meanwhile (`record_outcomes`)."""
        status = self.client.post(attempt.url, attempt.body.encode(), attempt.headers(datetime.now(UTC)))
        delivered = status is not None and 200 <= status < 300
        now = now or self.clock()
        row, attempts = attempt.delivery, attempt.delivery.attempts + 1
        if delivered:
            state, status, next_at, finished = repo.SENT, repo.SENT, row.next_attempt_at, now
        elif now - row.created_at >= GIVE_UP_AFTER:
            state, status, next_at, finished = repo.GIVEN_UP, repo.GIVEN_UP, row.next_attempt_at, now
        else:
            state, status, next_at, finished = queue.PENDING, repo.FAILED, now + retry_wait(attempts), None
        outcome = repo.outcome(row.id, state=state, attempts=attempts, next_attempt_at=next_at, finished_at=finished,
                               body=attempt.body, attempted_at=now, status=status)
        with self._lock:
            self._outcomes.append((outcome, delivered, state == repo.GIVEN_UP))
        return delivered

    def record_outcomes(self) -> int:
        """Record the attempts that ended since the last call, in one statement, then count them.
        Should it fail, their leases expire and the rows are tried again (at least once)."""
        with self._lock:
            ended, self._outcomes = self._outcomes, []
        if not ended:
            return 0
        try:
            with single_statement(self.engine) as conn:
                repo.record(conn, [outcome for outcome, _, _ in ended])
        except Exception:
            log.exception("could not record webhook delivery attempts", extra={"attempts": len(ended)})
            return 0
        for outcome, delivered, gave_up in ended:
            if gave_up:
                log.error("webhook delivery given up after 24 hours", extra={"delivery_id": str(outcome["id"])})
            self.metrics.webhook_attempted(delivered, gave_up=gave_up)
        return len(ended)

    # ------------------------------------------------------------------ claims

    def _fit(self, candidates: list[Row]) -> list[Row]:
        """The candidates that fit each subscription's free slots."""
        with self._lock:
            taken = collections.Counter(self._busy)
        chosen = []
        for row in candidates:
            if taken[row.webhook_id] < self.per_webhook:
                taken[row.webhook_id] += 1
                chosen.append(row)
        return chosen

    def _claim(self, *, now: datetime, limit: int) -> list[Attempt]:
        with self._lock:
            full = [webhook for webhook, count in self._busy.items() if count >= self.per_webhook]
        where = [webhook_deliveries.c.webhook_id.not_in(full)] if full else []
        with transaction(self.engine, write=True) as conn:
            claimed = queue.claim_due(
                conn, now=now, lease_until=now + self.lease, limit=limit, table=webhook_deliveries,
                where=where, choose=self._fit,
            )
            if not claimed:
                return []
            attempts = self._ready(conn, claimed)
        with self._lock:
            self._busy.update(attempt.delivery.webhook_id for attempt in attempts)
        return attempts

    @staticmethod
    def _ready(conn: Connection, claimed: list[Row]) -> list[Attempt]:
        """Each claimed row with its body and target; a first attempt's body is the event as the
        feed renders it (its incident as it stood after the change), and every retry sends that same body."""
        first = [row.event_id for row in claimed if row.body is None]
        rendered: dict[int, str] = {}
        if first:
            rows = repo.events_with_incidents(conn, first)
            for row, event in zip(rows, feed_events(rows), strict=True):
                rendered[row.event_id] = event.text
        targets = repo.secrets(conn, list({row.webhook_id for row in claimed}))
        return [
            Attempt(row, row.body if row.body is not None else rendered[row.event_id], *targets[row.webhook_id])
            for row in claimed
            if (row.body is not None or row.event_id in rendered) and row.webhook_id in targets
        ]

    def _attempt_and_free(self, attempt: Attempt, now: datetime | None) -> None:
        try:
            self.attempt(attempt, now=now)
        finally:
            with self._lock:
                self._busy[attempt.delivery.webhook_id] -= 1
                if self._busy[attempt.delivery.webhook_id] <= 0:
                    del self._busy[attempt.delivery.webhook_id]
            self._wake.set()

    def dispatch(self, *, now: datetime | None = None) -> list[threading.Thread]:
        """Claim what is due and fits the free slots, and start each attempt (a greenlet under gevent)."""
        started: list[threading.Thread] = []
        while True:
            self.record_outcomes()  # what ended meanwhile, before its slots are used again
            with self._lock:
                free = self.in_flight - sum(self._busy.values())
            if free <= 0:
                break
            attempts = self._claim(now=now or self.clock(), limit=min(free, CLAIM_BATCH))
            if not attempts:
                break
            for attempt in attempts:
                thread = threading.Thread(target=self._attempt_and_free, args=(attempt, now), daemon=True)
                thread.start()
                started.append(thread)
        return started

    def deliver_due(self, *, now: datetime | None = None) -> int:
        """Try every row due at `now` once, and wait for the outcomes. Returns how many were tried."""
        tried = 0
        while threads := self.dispatch(now=now):
            for thread in threads:
                thread.join()
            tried += len(threads)
        self.record_outcomes()
        return tried

    def purge_finished(self) -> int:
        """Forget deliveries finished more than KEEP_FINISHED ago: the table does not grow forever."""
        with single_statement(self.engine) as conn:
            return repo.purge_finished(conn, before=self.clock() - KEEP_FINISHED)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Until stop(): claim and start attempts; look again when one finishes or POLL_EVERY passed."""
        stopping = self._loop.stopping
        while not stopping.is_set():
            self._wake.clear()
            try:
                self.dispatch()
            except Exception as exc:  # the database may be back by the next look
                log.warning("webhook deliveries: %s", exc.__class__.__name__)
                stopping.wait(1.0)
            self._wake.wait(POLL_EVERY)
        self.record_outcomes()

    def start(self) -> WebhookSender:
        self._loop.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)

"""Durable notifications: a notification is written to the outbox in the transaction of the change
that causes it, delivered right after the commit, and retried from background work with backoff
(5 s, then doubling up to 5 minutes) until delivered or 24 hours old. At least once: the body
carries `notification_id`, stable across retries, so the receiver can drop duplicates."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine, Row

from incident_app.metrics import IncidentMetrics
from incident_app.peers.notify import CHANNEL, NotificationClient
from incident_app.repository import events
from incident_app.repository import outbox as queue
from incident_app.statements import Bound, execute_together
from incident_app.transactions import single_statement, transaction

log = logging.getLogger(__name__)

FIRST_RETRY = timedelta(seconds=5)
MAX_RETRY_WAIT = timedelta(minutes=5)
GIVE_UP_AFTER = timedelta(hours=24)
CLAIM_BATCH = 20  # rows tried per call of deliver_due
# Attempts in flight at once: each records its outcome on a pooled connection.
PARALLEL_ATTEMPTS = 4


def retry_wait(failed_attempts: int) -> timedelta:
    """Wait before the next attempt after `failed_attempts` failures: 5 s, 10 s, 20 s … 5 min."""
    return min(FIRST_RETRY * (2 ** max(failed_attempts - 1, 0)), MAX_RETRY_WAIT)


@dataclass(frozen=True)
class Pending:
    """A notification committed to the outbox, leased to the transaction's author for its first try."""

    id: uuid.UUID
    incident_pk: uuid.UUID
    payload: dict[str, Any]
    attempts: int = 0

    def to(self, engineer: str) -> Pending:
        """The same notification, addressed to another engineer."""
        return replace(self, payload={**self.payload, "engineer": engineer})


class NotificationOutbox:
    def __init__(
        self, *, engine: Engine, notifier: NotificationClient, metrics: IncidentMetrics,
        clock: Callable[[], datetime], lease: timedelta,
    ) -> None:
        self.engine = engine
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        # How long a claimed row is left alone: longer than one call to the Notification Service.
        self.lease = lease

    def prepare(
        self, *, incident_pk: uuid.UUID, incident_id: str, severity: str, engineer: str, message: str,
        now: datetime, hold: timedelta = timedelta(0),
    ) -> tuple[Pending, dict[str, Any]]:
        """A notification and its outbox row, to be written with the change that causes it, leased
        to the caller for one try.

        `hold` lengthens the lease for a caller with work to do before that try (the on-call lookup):
        should it die meanwhile, the background delivers the row as it stands once the lease ends.
        """
        notification_id = uuid.uuid4()
        payload = {
            "incident_id": incident_id,
            "engineer": engineer,
            "channel": CHANNEL,
            "message": message,
            "severity": severity,
            "notification_id": str(notification_id),
        }
        row = queue.new_row(
            notification_id=notification_id, incident_pk=incident_pk, payload=payload, now=now,
            first_attempt_at=now + self.lease + hold,
        )
        return Pending(notification_id, incident_pk, payload), row

    def enqueue(self, conn: Connection, *, incident: Row, engineer: str, message: str, now: datetime) -> Pending:
        """Write the notification in the caller's transaction, leased to the caller for one try."""
        pending, row = self.prepare(
            incident_pk=incident.id, incident_id=incident.incident_id, severity=incident.severity,
            engineer=engineer, message=message, now=now,
        )
        queue.enqueue(row).execute(conn)
        return pending

    def readdress(self, conn: Connection, pending: Pending, *, engineer: str) -> Pending:
        """Send a notification not yet tried to another engineer (the assignee found after the commit)."""
        pending = pending.to(engineer)
        queue.replace_payload(conn, pending.id, pending.payload)
        return pending

    def send(self, pending: Pending) -> bool:
        """One attempt, nothing recorded: the caller records it (`sent` or `record_failure`), then `count`s it."""
        return self.notifier.send(pending.payload)

    def sent(self, pending: Pending, *, now: datetime) -> tuple[Bound, Bound | None]:
        """What records a delivered attempt: the row marked sent (with the payload that went out) and
        its `notified` event, independent writes for one statement (statements.execute_together)."""
        return queue.delivered(
            notification_id=pending.id, incident_pk=pending.incident_pk, attempts=pending.attempts + 1,
            payload=pending.payload, details=self.notified_details(pending), now=now,
            dialect=self.engine.dialect.name,
        )

    def notified_details(self, pending: Pending) -> dict[str, Any]:
        """The details of the `notified` event of `pending`'s attempt now delivered."""
        return self._details(pending.id, pending.payload, pending.attempts + 1)

    def record_failure(self, conn: Connection, pending: Pending, *, now: datetime) -> None:
        """Reschedule a failed attempt, or give the notification up after a day of failures."""
        row = queue.find_pending(conn, pending.id)
        if row is not None:
            self._record_failure(conn, row, attempts=pending.attempts + 1, now=now)

    def count(self, delivered: bool) -> None:
        """The attempt in the metrics, once its outcome is committed."""
        self.metrics.notification_attempted(CHANNEL, delivered)

    def deliver(self, pending: Pending, *, now: datetime | None = None) -> bool:
        """One attempt, then its outcome recorded (as of `now`, default: when the reply came); metrics
        after the commit."""
        delivered = self.send(pending)
        now = now or self.clock()
        try:
            if delivered:  # the usual case, in one statement
                with single_statement(self.engine) as conn:
                    execute_together(conn, *self.sent(pending, now=now))
            else:
                with transaction(self.engine, write=True) as conn:
                    self.record_failure(conn, pending, now=now)
        except Exception:  # the lease expires and the row is retried
            log.exception("could not record a notification attempt", extra={"notification_id": str(pending.id)})
        self.count(delivered)
        return delivered

    @staticmethod
    def _details(notification_id: uuid.UUID, payload: dict[str, Any], attempts: int) -> dict[str, Any]:
        return {"notification_id": str(notification_id), "engineer": payload.get("engineer"), "attempt": attempts}

    def _record_failure(self, conn: Connection, row: Row, *, attempts: int, now: datetime) -> None:
        details = self._details(row.id, row.payload, attempts)
        if now - row.created_at >= GIVE_UP_AFTER:
            queue.finish(conn, row.id, state=queue.EXPIRED, attempts=attempts, now=now)
            events.record_event(conn, row.incident_id, "notification_failed", at=now,
                                details={**details, "gave_up": True})
        else:
            queue.reschedule(conn, row.id, attempts=attempts, next_attempt_at=now + retry_wait(attempts))
            if attempts == 1:
                # One timeline entry when delivery first fails, not one per retry for a day.
                events.record_event(conn, row.incident_id, "notification_failed", at=now,
                                    details={**details, "retrying": True})

    def deliver_due(self, *, now: datetime | None = None, limit: int = CLAIM_BATCH) -> int:
        """Claim due rows a few at a time and try each once. Returns how many were tried.

        A claim takes only as many rows as are tried at once, so its lease (one call's length) covers
        every row it holds: no row waits behind slow calls until its lease runs out and is sent twice.
        """
        as_of = now
        tried = 0
        while tried < limit:
            now = as_of or self.clock()
            with transaction(self.engine, write=True) as conn:
                claimed = queue.claim_due(
                    conn, now=now, lease_until=now + self.lease, limit=min(PARALLEL_ATTEMPTS, limit - tried)
                )
            if not claimed:
                break
            batch = [Pending(row.id, row.incident_id, dict(row.payload), row.attempts) for row in claimed]
            # Threads are greenlets under gevent: one slow call does not delay the others.
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                list(pool.map(lambda pending: self.deliver(pending, now=as_of), batch))
            tried += len(batch)
        return tried

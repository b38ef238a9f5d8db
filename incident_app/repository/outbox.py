"""The notification outbox: rows written with the change that causes them, claimed for delivery
through the database so that any number of workers and replicas deliver each row once at a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app.repository import events
from incident_app.statements import Bound, bind, prefixed
from incident_app.tables import notification_outbox

PENDING, SENT, EXPIRED = "pending", "sent", "expired"


ENQUEUED = ("id", "incident_id", "payload", "state", "attempts", "created_at", "next_attempt_at")
# Built once, values bound at execution (statements.Bound).
_ENQUEUE = notification_outbox.insert().values(bind(notification_outbox, ENQUEUED, "notification_"))
_MARK_SENT = (
    notification_outbox.update()
    .where(notification_outbox.c.id == sa.bindparam("sent_id"), notification_outbox.c.state == PENDING)
    .values(state=SENT, **bind(notification_outbox, ("attempts", "finished_at", "payload"), "sent_"))
)


def new_row(
    *, notification_id: uuid.UUID, incident_pk: uuid.UUID, payload: Mapping[str, Any], now: datetime,
    first_attempt_at: datetime,
) -> dict[str, Any]:
    """A pending notification's row (its ENQUEUED columns), first tried at `first_attempt_at`."""
    return {"id": notification_id, "incident_id": incident_pk, "payload": dict(payload), "state": PENDING,
            "attempts": 0, "created_at": now, "next_attempt_at": first_attempt_at}


def enqueue(row: Mapping[str, Any]) -> Bound:
    return Bound(_ENQUEUE, prefixed(row, "notification_"))


def claim_due(
    conn: Connection, *, now: datetime, lease_until: datetime, limit: int, table: sa.Table = notification_outbox,
    where: Sequence[sa.ColumnElement[bool]] = (), choose: Callable[[list[Row]], list[Row]] | None = None,
) -> list[Row]:
    """Pending rows of `table` (an outbox: `id`, `state`, `next_attempt_at`) whose time has come,
    leased to the caller until `lease_until`. `where` narrows the candidates; `choose` keeps some of
    them (the others stay as they were, unclaimed).

    PostgreSQL: SKIP LOCKED lets concurrent claimers take disjoint rows without waiting. SQLite:
    the caller's write transaction (BEGIN IMMEDIATE) already serialises claimers.
    """
    o = table.c
    candidates = conn.execute(
        sa.select(*table.c)
        .where(o.state == PENDING, o.next_attempt_at <= now, *where)
        .order_by(o.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    due = [row.id for row in (choose(candidates) if choose else candidates)]
    if not due:
        return []
    return list(
        conn.execute(
            table.update()
            .where(o.id.in_(due), o.state == PENDING)
            .values(next_attempt_at=lease_until)
            .returning(*table.c)
        )
    )


def find_pending(conn: Connection, notification_id: uuid.UUID) -> Row | None:
    o = notification_outbox.c
    return conn.execute(
        sa.select(*notification_outbox.c).where(o.id == notification_id, o.state == PENDING).with_for_update()
    ).one_or_none()


def mark_sent(notification_id: uuid.UUID, *, attempts: int, now: datetime, payload: Mapping[str, Any]) -> Bound:
    """Record a delivery of `payload` (readdressed, perhaps, before it went out), unless the row is
    no longer pending."""
    values = {"attempts": attempts, "finished_at": now, "payload": dict(payload)}
    return Bound(_MARK_SENT, {"sent_id": notification_id, **prefixed(values, "sent_")})


def delivered(
    *, notification_id: uuid.UUID, incident_pk: uuid.UUID, attempts: int, payload: Mapping[str, Any],
    details: Mapping[str, Any], now: datetime, dialect: str,
) -> tuple[Bound, Bound | None]:
    """What records a delivered attempt: the row marked sent and its `notified` event (`details`),
    independent writes for one statement (statements.execute_together)."""
    notified = events.event(incident_pk, "notified", at=now, details=details)
    return (mark_sent(notification_id, attempts=attempts, now=now, payload=payload),
            events.insert_events(notified, dialect=dialect, prefix="notified"))


def finish(conn: Connection, notification_id: uuid.UUID, *, state: str, attempts: int, now: datetime) -> bool:
    o = notification_outbox.c
    result = conn.execute(
        notification_outbox.update()
        .where(o.id == notification_id, o.state == PENDING)
        .values(state=state, attempts=attempts, finished_at=now)
    )
    return result.rowcount == 1


def reschedule(conn: Connection, notification_id: uuid.UUID, *, attempts: int, next_attempt_at: datetime) -> bool:
    o = notification_outbox.c
    result = conn.execute(
        notification_outbox.update()
        .where(o.id == notification_id, o.state == PENDING)
        .values(attempts=attempts, next_attempt_at=next_attempt_at)
    )
    return result.rowcount == 1


def replace_payload(conn: Connection, notification_id: uuid.UUID, payload: Mapping[str, Any]) -> bool:
    o = notification_outbox.c
    result = conn.execute(
        notification_outbox.update()
        .where(o.id == notification_id, o.state == PENDING, o.attempts == 0)
        .values(payload=dict(payload))
    )
    return result.rowcount == 1

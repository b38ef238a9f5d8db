"""Webhook subscriptions and their deliveries. Delivery rows are written by the database itself
(migration 0007's trigger on the timeline); here they are read, claimed (repository/outbox.claim_due)
and their attempts recorded."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app.repository.feed import event_columns
from incident_app.repository.outbox import PENDING
from incident_app.statements import arrays, bind, prefixed, unnest_arrays
from incident_app.tables import incident_events, incidents, webhook_deliveries, webhooks

SENT, GIVEN_UP = "sent", "given_up"
FAILED = "failed"  # a delivery's last attempt failed; it is still pending


def insert(conn: Connection, row: Mapping[str, Any]) -> None:
    """Store a subscription, in the caller's transaction: from its commit on, every event written is
    matched against it.

    PostgreSQL's trigger reads the subscriptions when an event is written, which may be well before
    that event commits (and returns at once when it finds none, migration 0009). A SHARE lock on the
    timeline first waits for the transactions writing events now to commit, and holds back new
    writes until this one commits: no event written before the subscription existed can commit
    after it was stored. Subscriptions are rare; the writes wait a moment, once.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"LOCK TABLE {incident_events.fullname} IN SHARE MODE")
    conn.execute(webhooks.insert().values(**row))


@functools.cache
def _with_status() -> sa.Select:
    """Each subscription with its deliveries' state: when and how the last attempt went, how many
    wait (correlated subqueries on the indexes by webhook: SQLite has no LATERAL)."""
    d = webhook_deliveries.c
    latest = (
        sa.select(d.last_attempt_at, d.last_status)
        .where(d.webhook_id == webhooks.c.id, d.last_attempt_at.is_not(None))
        .order_by(d.last_attempt_at.desc())
        .limit(1)
    )
    pending = sa.select(sa.func.count()).where(d.webhook_id == webhooks.c.id, d.state == PENDING)
    return (
        sa.select(
            *webhooks.c,
            latest.with_only_columns(d.last_attempt_at).scalar_subquery().label("last_delivery_at"),
            latest.with_only_columns(d.last_status).scalar_subquery().label("last_status"),
            pending.scalar_subquery().label("pending"),
        )
        .order_by(webhooks.c.created_at, webhooks.c.id)
    )


def all_with_status(conn: Connection) -> list[Row]:
    return list(conn.execute(_with_status()))


def find_with_status(conn: Connection, webhook_id: uuid.UUID) -> Row | None:
    return conn.execute(_with_status().where(webhooks.c.id == webhook_id)).one_or_none()


def delete(conn: Connection, webhook_id: uuid.UUID) -> bool:
    """Remove the subscription and, with it (ON DELETE CASCADE), every delivery still waiting."""
    return conn.execute(webhooks.delete().where(webhooks.c.id == webhook_id)).rowcount == 1


def secrets(conn: Connection, webhook_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
    """Each subscription's (url, secret)."""
    found = conn.execute(sa.select(webhooks.c.id, webhooks.c.url, webhooks.c.secret)
                         .where(webhooks.c.id.in_(list(webhook_ids))))
    return {row.id: (row.url, row.secret) for row in found}


def events_with_incidents(conn: Connection, event_ids: Sequence[int]) -> list[Row]:
    """The events with their incidents, as the feed reads them (repository.feed.event_columns)."""
    e = incident_events.c
    return list(conn.execute(
        sa.select(*event_columns())
        .join_from(incident_events, incidents, incidents.c.id == e.incident_id)
        .where(e.id.in_(list(event_ids)))
    ))


OUTCOME = ("state", "attempts", "next_attempt_at", "finished_at", "body", "last_attempt_at", "last_status")
RECORDED = ("id", *OUTCOME)
# Built once, values bound at execution. PostgreSQL records a batch of attempts in one statement
# (the rows as arrays); SQLite, in process, runs one UPDATE per attempt (executemany).
_RECORD = (
    webhook_deliveries.update()
    .where(webhook_deliveries.c.id == sa.bindparam("outcome_id"), webhook_deliveries.c.state == PENDING)
    .values(bind(webhook_deliveries, OUTCOME, "outcome_"))
)
_OUTCOMES = unnest_arrays({name: webhook_deliveries.c[name].type for name in RECORDED}, "outcome_", "outcome")
_RECORD_MANY = (
    webhook_deliveries.update()
    .where(webhook_deliveries.c.id == _OUTCOMES.c.id, webhook_deliveries.c.state == PENDING)
    .values({name: _OUTCOMES.c[name] for name in OUTCOME})
)


def outcome(
    delivery_id: uuid.UUID, *, state: str, attempts: int, next_attempt_at: datetime, finished_at: datetime | None,
    body: str, attempted_at: datetime, status: str,
) -> dict[str, Any]:
    """An attempt's outcome, as its delivery's RECORDED columns."""
    return {"id": delivery_id, "state": state, "attempts": attempts, "next_attempt_at": next_attempt_at,
            "finished_at": finished_at, "body": body, "last_attempt_at": attempted_at, "last_status": status}


def record(conn: Connection, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Record attempts (`outcome`s), unless their rows are gone (the subscription was deleted)."""
    if not outcomes:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(_RECORD_MANY, arrays(outcomes, RECORDED, "outcome_"))
    else:
        conn.execute(_RECORD, [prefixed(row, "outcome_") for row in outcomes])


def purge_finished(conn: Connection, *, before: datetime) -> int:
    """Forget deliveries sent or given up before `before`; pending ones stay, however old."""
    d = webhook_deliveries.c
    return conn.execute(webhook_deliveries.delete().where(d.state != PENDING, d.finished_at < before)).rowcount

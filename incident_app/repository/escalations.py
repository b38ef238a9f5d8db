"""Queries of escalation: which open incidents are due, the row locks that make a level happen once,
and the writes of a batch of escalations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app.lifecycle import Status
from incident_app.repository import events
from incident_app.repository import outbox as outbox_queue
from incident_app.statements import arrays, bind, insert_arrays, prefixed, unnest_arrays
from incident_app.tables import incidents, notification_outbox

i = incidents.c


def _due(opened_before: datetime) -> list[sa.ColumnElement[bool]]:
    # Due: still open, and created (or last escalated) before the timeout window.
    return [i.status == Status.OPEN.value, sa.func.coalesce(i.escalated_at, i.created_at) <= opened_before]


def due_incidents(conn: Connection, *, opened_before: datetime, max_level: int, limit: int) -> list[Row]:
    return list(
        conn.execute(
            sa.select(i.id, i.service, i.escalation_level)
            .where(*_due(opened_before), i.escalation_level < max_level)
            .order_by(i.created_at)
            .limit(limit)
        )
    )


def claim_due(
    conn: Connection, *, opened_before: datetime, max_level: int, services: list[str], limit: int
) -> list[Row]:
    """Up to `limit` due incidents of `services` below `max_level`, oldest first, locked for the
    caller's transaction. Rows another worker holds are skipped (PostgreSQL), so that workers and
    replicas escalating together take different rows; SQLite's write transaction is exclusive."""
    return list(conn.execute(
        sa.select(*incidents.c)
        .where(*_due(opened_before), i.escalation_level < max_level, i.service.in_(services))
        .order_by(i.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ))


# What an escalation changes in its incident (assigned_to: the new assignee, or the same one).
ESCALATED = ("id", "escalation_level", "escalated_at", "updated_at", "notes", "assigned_to")


def record_escalations(
    conn: Connection, escalated: Sequence[Mapping[str, Any]], timeline: Sequence[Mapping[str, Any]],
    notifications: Sequence[Mapping[str, Any]],
) -> None:
    """Write a batch of escalations: each incident's ESCALATED columns, their events (in order) and
    their pages' outbox rows. PostgreSQL: one statement for any number, each table's rows given as
    arrays; SQLite: one executemany per table."""
    if not escalated:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(_UPDATE_ONE, [prefixed(values, "escalated_") for values in escalated])
        events.insert_events(*timeline, dialect=conn.dialect.name).execute(conn)  # after: the incidents as escalated
        conn.execute(notification_outbox.insert(), [dict(row) for row in notifications])
        return
    conn.execute(_RECORD_MANY, {
        **arrays(escalated, ESCALATED, "escalated_"),
        **arrays(timeline, events.COLUMNS, "event_"),
        **arrays(notifications, outbox_queue.ENQUEUED, "notification_"),
    })


_UPDATE_ONE = (
    incidents.update().where(i.id == sa.bindparam("escalated_id"))
    .values(bind(incidents, ESCALATED[1:], "escalated_"))
)
_ESCALATED_ROWS = unnest_arrays({name: incidents.c[name].type for name in ESCALATED}, "escalated_", "escalated")
_ESCALATED = (
    incidents.update().where(i.id == _ESCALATED_ROWS.c.id)
    .values({name: _ESCALATED_ROWS.c[name] for name in ESCALATED[1:]})
    .returning(*incidents.c)
    .cte("escalated_incidents")
)
# The events from the UPDATE's RETURNING: each with its incident as escalated.
_RECORD_MANY = sa.select(_ESCALATED.c.id).add_cte(
    events.from_arrays("event_", _ESCALATED).cte("timeline"),
    insert_arrays(notification_outbox, outbox_queue.ENQUEUED, "notification_").cte("notification"),
)

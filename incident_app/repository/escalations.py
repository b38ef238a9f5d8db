"""Queries of escalation: which open incidents are due, and the row lock that makes a level happen once."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app.lifecycle import Status
from incident_app.tables import incidents

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


def lock_if_still_due(conn: Connection, pk: uuid.UUID, *, level: int, opened_before: datetime) -> Row | None:
    """The incident, locked, if it is still open at `level` and due; None if another worker took it
    (PostgreSQL skips a row locked elsewhere; SQLite's write transaction is already exclusive)."""
    return conn.execute(
        sa.select(*incidents.c)
        .where(i.id == pk, i.escalation_level == level, *_due(opened_before))
        .with_for_update(skip_locked=True)
    ).one_or_none()

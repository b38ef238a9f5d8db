"""The timeline: events appended in the caller's transaction, read oldest first."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.tables import incident_events


def event(
    incident_pk: uuid.UUID,
    event_type: str,
    *,
    at: datetime,
    actor: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One timeline row, to be written by `insert_events`."""
    return {"incident_id": incident_pk, "type": event_type, "actor": actor, "details": dict(details or {}),
            "created_at": at}


def insert_events(*events: Mapping[str, Any], dialect: str = "") -> sa.Insert | None:
    """One INSERT of the given events, in order (their serial ids follow it); None when there are none.

    SQLAlchemy caches no multi-row VALUES, and compiling one per request was a third of a create's
    time: on PostgreSQL several events are a UNION ALL of typed one-row SELECTs, which it caches.
    """
    if not events:
        return None
    if len(events) == 1:
        return incident_events.insert().values(**events[0])
    if dialect != "postgresql":
        return incident_events.insert().values(list(events))
    columns = list(events[0])
    rows = [
        sa.select(*(sa.cast(sa.literal(e[name], incident_events.c[name].type), incident_events.c[name].type)
                    for name in columns))
        for e in events
    ]
    return incident_events.insert().from_select(columns, sa.union_all(*rows))


def insert_events_from(source: sa.CTE, event: Mapping[str, Any]) -> sa.Insert:
    """One INSERT of `event` per row of `source` (a data-modifying CTE): none when it changed nothing."""
    columns = list(event)
    values = (sa.literal(event[name], incident_events.c[name].type) for name in columns)
    return incident_events.insert().from_select(columns, sa.select(*values).select_from(source))


def record_event(
    conn: Connection,
    incident_pk: uuid.UUID,
    event_type: str,
    *,
    at: datetime,
    actor: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(insert_events(event(incident_pk, event_type, at=at, actor=actor, details=details)))


def list_events(conn: Connection, incident_pk: uuid.UUID) -> list[dict[str, Any]]:
    # The serial id breaks ties between events of one transaction, which share a timestamp.
    rows = conn.execute(
        sa.select(incident_events.c.type, incident_events.c.created_at, incident_events.c.actor,
                  incident_events.c.details)
        .where(incident_events.c.incident_id == incident_pk)
        .order_by(incident_events.c.created_at, incident_events.c.id)
    ).mappings()
    return [dict(row) for row in rows]

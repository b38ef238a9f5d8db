"""The timeline: events appended in the caller's transaction, read oldest first."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.statements import Bound, prefixed
from incident_app.tables import incident_events

COLUMNS = ("incident_id", "type", "actor", "details", "created_at")


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


def insert_events(*events: Mapping[str, Any], dialect: str, prefix: str = "event") -> Bound | None:
    """One INSERT of the given events, in order (their serial ids follow it); None when there are none.

    On PostgreSQL a UNION ALL of one-row SELECTs of bound values (`from_rows`), so that it can run
    with other statements (statements.execute_together); elsewhere executemany. `prefix` names its values.
    """
    if not events:
        return None
    if dialect != "postgresql":
        return Bound(incident_events.insert(), [dict(e) for e in events])
    return Bound(_insert_events(len(events), prefix), parameters(events, prefix))


@functools.cache
def _insert_events(count: int, prefix: str) -> sa.Insert:
    return from_rows(count, prefix)


def from_rows(count: int, prefix: str, source: sa.FromClause | None = None) -> sa.Insert:
    """The INSERT of `count` events bound as `parameters` names them; with `source` (a
    data-modifying CTE), once per row it returns: none when it changed nothing."""

    def row(index: int) -> sa.Select:
        # Cast: in a UNION, PostgreSQL would otherwise take an untyped value for text, not jsonb.
        columns = (incident_events.c[name] for name in COLUMNS)
        values = sa.select(*(sa.cast(sa.bindparam(f"{prefix}_{index}_{c.name}", type_=c.type), c.type)
                             for c in columns))
        return values if source is None else values.select_from(source)

    rows = row(0) if count == 1 else sa.union_all(*(row(index) for index in range(count)))
    return incident_events.insert().from_select(COLUMNS, rows)


def parameters(events: tuple[Mapping[str, Any], ...] | list[Mapping[str, Any]], prefix: str) -> dict[str, Any]:
    """The values of `events` under the names `from_rows` binds them."""
    return {name: value for index, e in enumerate(events) for name, value in prefixed(e, f"{prefix}_{index}_").items()}


def record_event(
    conn: Connection,
    incident_pk: uuid.UUID,
    event_type: str,
    *,
    at: datetime,
    actor: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    insert = insert_events(event(incident_pk, event_type, at=at, actor=actor, details=details),
                           dialect=conn.dialect.name)
    insert.execute(conn)


def list_events(conn: Connection, incident_pk: uuid.UUID) -> list[dict[str, Any]]:
    # The serial id breaks ties between events of one transaction, which share a timestamp.
    rows = conn.execute(
        sa.select(incident_events.c.type, incident_events.c.created_at, incident_events.c.actor,
                  incident_events.c.details)
        .where(incident_events.c.incident_id == incident_pk)
        .order_by(incident_events.c.created_at, incident_events.c.id)
    ).mappings()
    return [dict(row) for row in rows]

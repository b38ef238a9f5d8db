"""The timeline: events appended in the caller's transaction, read oldest first."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.repository.items import item_json
from incident_app.statements import Bound, prefixed, unnest_arrays
from incident_app.tables import incident_events, incidents

COLUMNS = ("incident_id", "type", "actor", "details", "created_at")
# What an INSERT of events writes: COLUMNS, then the incident as it stood after the change (0010).
WITH_INCIDENT = (*COLUMNS, "incident")


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
    Each takes its incident's list item (`with_incident`) as the statement reads it: run it after the
    change it records, never in one statement with it (there, `from_rows` with the change as `source`).

    On PostgreSQL a UNION ALL of one-row SELECTs of bound values (`from_rows`), so that it can run
    with other statements (statements.execute_together); elsewhere executemany. `prefix` names its values.
    """
    if not events:
        return None
    if dialect != "postgresql":
        return Bound(_SQLITE_INSERT, [dict(e) for e in events])
    return Bound(_insert_events(len(events), prefix), parameters(events, prefix))


@functools.cache
def _insert_events(count: int, prefix: str) -> sa.Insert:
    return from_rows(count, prefix)


def from_rows(count: int, prefix: str, source: sa.FromClause | None = None) -> sa.Insert:
    """PostgreSQL: the INSERT of `count` events bound as `parameters` names them, each with its
    incident from `incidents` as the statement reads it; with `source` (a data-modifying CTE
    returning the incident's columns), once per row it returns, that row being their incident as
    changed (bound as `parameters(..., of_source=True)` names them): none when it changed nothing."""

    def row(index: int) -> sa.Select:
        # Cast: in a UNION, PostgreSQL would otherwise take an untyped value for text, not jsonb.
        values = {c.name: sa.cast(sa.bindparam(f"{prefix}_{index}_{c.name}", type_=c.type), c.type)
                  for c in (incident_events.c[name] for name in COLUMNS)}
        if source is None:
            return sa.select(*values.values(), item_json(incidents)).where(incidents.c.id == values["incident_id"])
        values["incident_id"] = source.c.id
        return sa.select(*values.values(), item_json(source)).select_from(source)

    return with_incident(row(0) if count == 1 else sa.union_all(*(row(index) for index in range(count))))


def parameters(
    events: tuple[Mapping[str, Any], ...] | list[Mapping[str, Any]], prefix: str, *, of_source: bool = False,
) -> dict[str, Any]:
    """The values of `events` under the names `from_rows` binds them; `of_source`: for `from_rows`
    with a source, which gives their incident itself."""
    left_out = {"incident_id"} if of_source else set()
    return {name: value for index, e in enumerate(events)
            for name, value in prefixed({k: v for k, v in e.items() if k not in left_out},
                                        f"{prefix}_{index}_").items()}


def with_incident(rows: sa.Select) -> sa.Insert:
    """The INSERT of events selected as COLUMNS followed by their incident's list item (items.item_json)."""
    return incident_events.insert().from_select(WITH_INCIDENT, rows)


def from_arrays(prefix: str, source: sa.FromClause) -> sa.Insert:
    """PostgreSQL: the INSERT of events given as arrays (statements.arrays of COLUMNS under `prefix`),
    in their order (their serial ids follow it), each with its incident as `source` (a data-modifying
    CTE returning the incident's columns) returns it; an event whose incident it does not return is
    not written."""
    given = unnest_arrays({name: incident_events.c[name].type for name in COLUMNS}, prefix, ordinality="position")
    return with_incident(
        sa.select(*(given.c[name] for name in COLUMNS), item_json(source))
        .join_from(given, source, source.c.id == given.c.incident_id)
        .order_by(given.c.position)
    )


def _sqlite_insert() -> sa.Insert:
    values = [sa.type_coerce(sa.bindparam(name, type_=incident_events.c[name].type), incident_events.c[name].type)
              for name in COLUMNS]
    return with_incident(sa.select(*values, item_json(incidents)).where(incidents.c.id == values[0]))


_SQLITE_INSERT = _sqlite_insert()


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

"""Queries on incidents and their linked alerts. Transactions belong to the caller."""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from incident_app.prepared import execute_prepared
from incident_app.repository import events
from incident_app.repository import outbox as outbox_queue
from incident_app.statements import Bound, arrays, bind, execute_together, insert_arrays, prefixed
from incident_app.tables import (
    UTCDateTime,
    incident_alerts,
    incident_counts,
    incident_events,
    incidents,
    notification_outbox,
)
from incident_app.transactions import autocommitting

T = TypeVar("T")


@dataclass(frozen=True)
class ListFilters:
    status: str | None = None
    severity: str | None = None
    service: str | None = None

    def clauses(self, table: sa.Table = incidents) -> list[sa.ColumnElement[bool]]:
        """Equality on each given field, on `incidents` or on a table with the same columns (incident_counts)."""
        return [table.c[name] == value for name, value in vars(self).items() if value is not None]


@dataclass(frozen=True)
class NewIncident:
    """A new incident's rows: the incident (its NEW_COLUMNS), its alert links, its timeline and its
    notification's outbox row."""

    values: Mapping[str, Any]
    links: Sequence[Mapping[str, Any]]
    timeline: Sequence[Mapping[str, Any]]
    notification: Mapping[str, Any]


NEW_COLUMNS = ("id", "incident_id", "title", "description", "service", "severity", "status", "notes",
               "created_at", "updated_at")
_LINK_COLUMNS = ("incident_id", "alert_id", "linked_at")


def insert_new_incidents(conn: Connection, new: Sequence[NewIncident]) -> list[Row]:
    """Store new incidents with their rows; the stored incidents, in order.

    PostgreSQL: one statement for any number of them, each table's rows given as arrays (the
    service's group commit hands it the creates of the moment). SQLite: one incident at a time.
    """
    if conn.dialect.name != "postgresql":
        return [_insert_new_incident(conn, incident) for incident in new]
    parameters = {
        **arrays([incident.values for incident in new], NEW_COLUMNS, "incident_"),
        **arrays([link for incident in new for link in incident.links], _LINK_COLUMNS, "link_"),
        **arrays([event for incident in new for event in incident.timeline], events.COLUMNS, "event_"),
        **arrays([incident.notification for incident in new], outbox_queue.ENQUEUED, "notification_"),
    }
    stored = {row.id: row for row in conn.execute(_INSERT_NEW, parameters)}
    return [stored[incident.values["id"]] for incident in new]


# Links and events keep their order within each array: a timeline's serial ids follow it.
_INSERT_NEW = (
    insert_arrays(incidents, NEW_COLUMNS, "incident_").returning(*incidents.c)
    .add_cte(insert_arrays(incident_alerts, _LINK_COLUMNS, "link_").cte("links"),
             insert_arrays(incident_events, events.COLUMNS, "event_").cte("timeline"),
             insert_arrays(notification_outbox, outbox_queue.ENQUEUED, "notification_").cte("notification"))
)


def _insert_new_incident(conn: Connection, new: NewIncident) -> Row:
    insert = Bound(_insert_incident(tuple(new.values)), prefixed(new.values, "incident_"))
    links = Bound(incident_alerts.insert(), list(new.links)) if new.links else None
    (row,) = execute_together(conn, insert, links, events.insert_events(*new.timeline, dialect=conn.dialect.name),
                              outbox_queue.enqueue(new.notification))
    return row


@functools.cache
def _insert_incident(columns: tuple[str, ...]) -> sa.Insert:
    return incidents.insert().values(bind(incidents, columns, "incident_")).returning(*incidents.c)


def links(incident_pk: uuid.UUID, alert_ids: Iterable[uuid.UUID], now: datetime) -> list[dict[str, Any]]:
    """The rows linking alerts to an incident."""
    return [{"incident_id": incident_pk, "alert_id": alert_id, "linked_at": now} for alert_id in alert_ids]


def find_incident(conn: Connection, incident_id: str) -> Row | None:
    return conn.execute(sa.select(*incidents.c).where(incidents.c.incident_id == incident_id)).one_or_none()


def update_incident(pk: uuid.UUID, values: Mapping[str, Any]) -> Bound:
    """The UPDATE of one incident, returning the changed row."""
    return Bound(_update_incident(tuple(values)), {"pk": pk, **prefixed(values, "new_")})


@functools.cache
def _update_incident(columns: tuple[str, ...]) -> sa.Update:
    return (
        incidents.update().where(incidents.c.id == sa.bindparam("pk"))
        .values(bind(incidents, columns, "new_")).returning(*incidents.c)
    )


def assign_if_unassigned(
    conn: Connection, pk: uuid.UUID, assignee: str, now: datetime, *, together: Sequence[Bound | None] = ()
) -> Row | None:
    """Set the assignee, with its `assigned` event, unless someone set one meanwhile (None then).

    `together` are further independent writes made in the same statement (db.execute_together).
    """
    event = events.event(pk, "assigned", at=now, details={"assigned_to": assignee})
    parameters = {"pk": pk, "was_assigned_to": None, **prefixed({"assigned_to": assignee, "updated_at": now}, "new_")}
    postgres = conn.dialect.name == "postgresql"
    assigned, assigned_event = _assign_if_unassigned(postgres)
    if postgres:
        # One statement: the event is written from the UPDATE's RETURNING, so only when it assigned.
        rows = execute_together(conn, Bound(assigned, parameters),
                                Bound(assigned_event, events.parameters([event], "assigned")), *together)
    else:
        rows = conn.execute(assigned, parameters).all()
        for statement in (events.insert_events(event, dialect=conn.dialect.name) if rows else None, *together):
            if statement is not None:
                statement.execute(conn)
    return rows[0] if rows else None


@functools.cache
def _assign_if_unassigned(postgres: bool) -> tuple[sa.Executable, sa.Insert | None]:
    update = _update_if_unchanged(("assigned_to", "updated_at"), ("assigned_to",))
    if not postgres:
        return update, None
    changed = update.cte("assigned")
    return sa.select(*changed.c), events.from_rows(1, "assigned", source=changed)


def update_if_unchanged(
    conn: Connection, row: Row, values: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]],
    *, unchanged: Sequence[str],
) -> Row | None:
    """Write `values` and the `timeline` events to the incident read as `row`, in one statement,
    only if its `unchanged` columns still hold what `row` holds; the changed row, or None (nothing
    written) when another write got there first."""
    postgres = conn.dialect.name == "postgresql"
    update = _update_if_unchanged(tuple(values), tuple(unchanged))
    parameters = {"pk": row.id, **{f"was_{name}": row._mapping[name] for name in unchanged},
                  **prefixed(values, "new_")}
    if not postgres:
        rows = conn.execute(update, parameters).all()
        if rows:
            events.insert_events(*timeline, dialect=conn.dialect.name).execute(conn)
        return rows[0] if rows else None
    statement = _with_events_from(update, len(timeline))
    rows = conn.execute(statement, {**parameters, **events.parameters(timeline, "event")}).all()
    return rows[0] if rows else None


@functools.cache
def _update_if_unchanged(columns: tuple[str, ...], unchanged: tuple[str, ...]) -> sa.Update:
    # Built once per shape, its values bound at execution (db.Bound): a CTE returning every column
    # costs more to build and cache-key (0.6 ms) than the round trip it saves.
    was = bind(incidents, unchanged, "was_")
    return (
        incidents.update()
        .where(incidents.c.id == sa.bindparam("pk"),
               *(incidents.c[name].is_not_distinct_from(was[name]) for name in unchanged))
        .values(bind(incidents, columns, "new_"))
        .returning(*incidents.c)
    )


@functools.cache
def _with_events_from(update: sa.Update, event_count: int) -> sa.Select:
    # The events are written from the UPDATE's RETURNING: only when it changed the row.
    changed = update.cte("changed")
    return sa.select(*changed.c).add_cte(events.from_rows(event_count, "event", source=changed).cte("timeline"))


def list_incidents(conn: Connection, filters: ListFilters, *, limit: int, offset: int) -> tuple[list[Row], int]:
    """A page, newest first, and the number of incidents matching the filters, in one statement (one
    snapshot). The total is the triggers' counts, not a count(*): a few rows to sum instead of up to
    every matching incident."""
    counted = sa.select(sa.func.coalesce(sa.func.sum(incident_counts.c.count), 0)).where(
        *filters.clauses(incident_counts)
    )
    page = conn.execute(
        sa.select(*incidents.c, counted.scalar_subquery().label("total"))
        .where(*filters.clauses())
        .order_by(incidents.c.created_at.desc(), incidents.c.incident_id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    total = page[0].total if page else 0
    if not page and offset:  # a page past the end carries no total: ask for it alone
        total = conn.execute(counted).scalar_one()
    # int(): PostgreSQL's sum of a bigint is a numeric, which psycopg2 returns as a Decimal.
    return page, int(total)


def list_page_json(conn: Connection, filters: ListFilters, *, limit: int, offset: int) -> str:
    """PostgreSQL only: what `list_incidents` reads, as the API's JSON text, built by the database.

    Turning 50 rows into Python values and then into JSON was a third of a list request's time in
    the worker; PostgreSQL builds the same document in C. tests/test_list.py holds it equal to the
    page the service builds from `list_incidents` (which SQLite uses).
    """
    given = {name: value for name, value in vars(filters).items() if value is not None}
    statement = _page_json(tuple(given))
    parameters = {**given, "limit": limit, "offset": offset}
    if len(given) > 1:
        # Which index serves two filters best depends on their values (a plan for any values read
        # up to 7 times longer at 1,000,000 rows): planned for the values, every time.
        return conn.execute(statement, parameters).scalar_one()
    return execute_prepared(conn, statement, parameters).scalar_one()


# A list item's fields beyond the stored columns, as the service computes them (service.incident_document).
_SECONDS_BETWEEN = {"mtta_seconds": "acknowledged_at", "mttr_seconds": "resolved_at"}
_RFC3339_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'  # schemas.rfc3339: UTC, always microseconds


@functools.cache
def _page_json(filtered_on: tuple[str, ...]) -> sa.Select:
    # Built once per combination of filters, its values bound at execution: compiled and cache-keyed once.
    def equal(table: sa.Table) -> list[sa.ColumnElement[bool]]:
        return [table.c[name] == sa.bindparam(name) for name in filtered_on]

    newest_first = (incidents.c.created_at.desc(), incidents.c.incident_id.desc())
    page = (
        sa.select(incidents).where(*equal(incidents)).order_by(*newest_first)
        .limit(sa.bindparam("limit")).offset(sa.bindparam("offset"))
        .subquery("page")
    )

    def value(name: str) -> sa.ColumnElement[Any]:
        if name in _SECONDS_BETWEEN:
            later = page.c[_SECONDS_BETWEEN[name]]
            return sa.cast(sa.extract("epoch", later - page.c.created_at), postgresql.DOUBLE_PRECISION)
        column = page.c[name]
        if isinstance(column.type, UTCDateTime):
            return sa.func.to_char(sa.func.timezone("UTC", column), _RFC3339_UTC)
        return column

    # Each item is a row of the API's fields, turned into a JSON object as a whole (json_agg of the
    # row): 0.09 ms less per page than naming every field in a json_build_object.
    item = sa.select(*(value(name).label(name) for name in (*incidents.c.keys(), *_SECONDS_BETWEEN))).subquery("item")
    # The RFC 3339 text of a time in UTC sorts as the time does, byte by byte.
    newest_item_first = (item.c.created_at.collate("C").desc(), item.c.incident_id.desc())
    items = sa.func.json_agg(postgresql.aggregate_order_by(item.table_valued(), *newest_item_first))
    total = sa.select(sa.func.coalesce(sa.func.sum(incident_counts.c.count), 0)).where(*equal(incident_counts))
    pairs = {
        "incidents": sa.func.coalesce(items, sa.literal_column("'[]'::json")),
        "total": total.scalar_subquery(),
        "limit": sa.bindparam("limit"),
        "offset": sa.bindparam("offset"),
    }
    document = sa.func.json_build_object(*(x for key, v in pairs.items() for x in (sa.literal_column(f"'{key}'"), v)))
    # As text: psycopg2 would otherwise decode the json into Python objects.
    return sa.select(sa.cast(document, sa.Text).label("page")).select_from(item)


def link_alerts(conn: Connection, incident_pk: uuid.UUID, alert_ids: Iterable[uuid.UUID], now: datetime) -> int:
    """Link alerts to an incident; an alert already linked stays as it was. Returns how many were new."""
    rows = links(incident_pk, alert_ids, now)
    if not rows:
        return 0
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(incident_alerts).values(rows).on_conflict_do_nothing()
    return conn.execute(statement).rowcount


# The platform's Alert Ingestion Service may keep its alerts in the same database. It is optional:
# its presence is looked up, cached for a minute, and linked alerts are enriched only when it is there.
_ALERT_COLUMNS = ("id", "service", "severity", "message", "timestamp")
_platform_alerts = sa.Table(
    "alerts",
    sa.MetaData(),
    sa.Column("id", sa.Uuid()),
    sa.Column("service", sa.Text()),
    sa.Column("severity", sa.Text()),
    sa.Column("message", sa.Text()),
    sa.Column("timestamp", UTCDateTime()),
    schema="alerts",
)
_ALERTS_TABLE_TTL = 60.0
_alerts_table_seen: dict[str, tuple[float, bool]] = {}


def forget_platform_alerts_table() -> None:
    """Look the platform's alerts table up again on next use, e.g. after it was created or dropped."""
    _alerts_table_seen.clear()


def _platform_alerts_present(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    key = str(conn.engine.url)
    seen = _alerts_table_seen.get(key)
    if seen is None or time.monotonic() - seen[0] > _ALERTS_TABLE_TTL:
        found = conn.execute(
            sa.text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'alerts' AND table_name = 'alerts'"
            )
        ).scalars()
        seen = (time.monotonic(), set(_ALERT_COLUMNS) <= set(found))
        _alerts_table_seen[key] = seen
    return seen[1]


def linked_alerts(conn: Connection, incident_pks: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Linked alerts per incident, oldest link first, with the alert's own fields when available."""

    def query(enrich: bool) -> dict[uuid.UUID, list[dict[str, Any]]]:
        columns, source = _alert_selection(enrich)
        rows = conn.execute(
            sa.select(incident_alerts.c.incident_id.label("linked_incident_id"), *columns)
            .select_from(source)
            .where(incident_alerts.c.incident_id.in_(list(incident_pks)))
            .order_by(incident_alerts.c.linked_at, incident_alerts.c.alert_id)
        ).mappings()
        linked: dict[uuid.UUID, list[dict[str, Any]]] = {pk: [] for pk in incident_pks}
        for row in rows:
            linked[row["linked_incident_id"]].append(_alert_entry(row))
        return linked

    return _enriched_if_possible(conn, query)


def new_links(
    conn: Connection, incident_pk: uuid.UUID, alert_ids: Sequence[uuid.UUID], now: datetime
) -> list[dict[str, Any]]:
    """The links `insert_links` just made, as `linked_alerts` would read them (same time, so by
    alert id); read back only when the platform's alerts table can add the alerts' own fields."""
    if _platform_alerts_present(conn):
        return linked_alerts(conn, [incident_pk])[incident_pk]
    return [{"alert_id": alert_id, "linked_at": now} for alert_id in sorted(alert_ids)]


def find_incident_with_alerts(
    conn: Connection, incident_id: str, *, for_update: bool = False
) -> tuple[Row, list[dict[str, Any]]] | None:
    """An incident and its linked alerts in one statement: the hot read path, one round trip.
    `for_update` locks the incident's row (PostgreSQL; SQLite's write transaction holds the lock)."""

    def query(enrich: bool) -> tuple[Row, list[dict[str, Any]]] | None:
        rows = execute_prepared(conn, _incident_with_alerts(enrich, for_update), {"incident_id": incident_id}).all()
        if not rows:
            return None
        alerts = [_alert_entry(row._mapping) for row in rows if row._mapping["linked_alert_id"] is not None]
        return rows[0], alerts

    return _enriched_if_possible(conn, query)


@functools.cache
def _incident_with_alerts(enrich: bool, for_update: bool) -> sa.Select:
    # Built once: a statement object reused is compiled and cache-keyed once, not per request.
    columns, source = _alert_selection(enrich)
    query = (
        sa.select(*incidents.c, *columns)
        .select_from(incidents.outerjoin(source, incident_alerts.c.incident_id == incidents.c.id))
        .where(incidents.c.incident_id == sa.bindparam("incident_id"))
        .order_by(incident_alerts.c.linked_at, incident_alerts.c.alert_id)
    )
    return query.with_for_update(of=incidents) if for_update else query


def _enriched_if_possible(conn: Connection, query: Callable[[bool], T]) -> T:
    """Run `query` with the platform's alert fields when its table is there, else without."""
    if _platform_alerts_present(conn):
        autocommit = autocommitting(conn)
        try:
            # In a transaction, a savepoint, so that a failed join leaves it usable.
            with contextlib.nullcontext() if autocommit else conn.begin_nested():
                return query(True)
        except sa.exc.ProgrammingError:
            # The platform's table went away or changed since it was looked up: links alone will do.
            forget_platform_alerts_table()
    return query(False)


def _alert_selection(enrich: bool) -> tuple[list[Any], Any]:
    """The columns of a linked alert (labelled linked_*/alert_*), and the tables they come from."""
    columns: list[Any] = [
        incident_alerts.c.alert_id.label("linked_alert_id"),
        incident_alerts.c.linked_at.label("linked_at"),
    ]
    if not enrich:
        return columns, incident_alerts
    a = _platform_alerts.c
    columns += [
        a.id.is_not(None).label("alert_known"),
        sa.cast(a.service, sa.Text).label("alert_service"),
        sa.cast(a.severity, sa.Text).label("alert_severity"),
        sa.cast(a.message, sa.Text).label("alert_message"),
        a.timestamp.label("alert_timestamp"),
    ]
    return columns, incident_alerts.outerjoin(_platform_alerts, a.id == incident_alerts.c.alert_id)


def _alert_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    entry = {"alert_id": row["linked_alert_id"], "linked_at": row["linked_at"]}
    # An alert the platform's table does not hold gets no made-up nulls, only its link.
    if row.get("alert_known"):
        entry.update({name: row[f"alert_{name}"] for name in _ALERT_COLUMNS[1:]})
    return entry

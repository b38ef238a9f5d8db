"""Queries on incidents and their linked alerts. Transactions belong to the caller.

Over 300 lines: each write of an incident is here in both its forms, PostgreSQL's single statement
(often for many incidents at once) and SQLite's steps, side by side so that they change together."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from incident_app.prepared import execute_prepared
from incident_app.repository import events, platform_alerts
from incident_app.repository import outbox as outbox_queue
from incident_app.repository.items import item_json
from incident_app.statements import Bound, arrays, bind, execute_together, insert_arrays, prefixed, unnest_arrays
from incident_app.tables import (
    UNRESOLVED,
    incident_alerts,
    incident_events,
    incidents,
    notification_outbox,
)


@dataclass(frozen=True)
class NewIncident:
    """A new incident's rows: the incident (its NEW_COLUMNS), its alert links, its timeline and its
    notification's outbox row."""

    values: Mapping[str, Any]
    links: Sequence[Mapping[str, Any]]
    timeline: Sequence[Mapping[str, Any]]
    notification: Mapping[str, Any]


NEW_COLUMNS = ("id", "incident_id", "title", "description", "service", "severity", "status", "notes",
               "created_at", "updated_at", "dedup_key")
_LINK_COLUMNS = ("incident_id", "alert_id", "linked_at")


def insert_many(conn: Connection, new: Sequence[NewIncident]) -> list[Row | None]:
    """PostgreSQL: store new incidents with their rows in one statement for any number of them, each
    table's rows given as arrays (PostgresStore's group commit hands it the creates of the moment).
    The stored incidents, in order; None for one whose `dedup_key` an unresolved incident (stored
    before, or earlier in this batch) already has: nothing of it is written, the others are."""
    parameters = {
        **arrays([incident.values for incident in new], NEW_COLUMNS, "incident_"),
        **arrays([link for incident in new for link in incident.links], _LINK_COLUMNS, "link_"),
        **arrays([event for incident in new for event in incident.timeline], events.COLUMNS, "event_"),
        **arrays([incident.notification for incident in new], outbox_queue.ENQUEUED, "notification_"),
    }
    grouping = any(incident.values.get("dedup_key") is not None for incident in new)
    # Prepared: one shape for any number of incidents (arrays), so PostgreSQL parses and plans its
    # CTEs once per connection instead of for every batch; its plan does not depend on the values.
    statement = _INSERT_DEDUPLICATED if grouping else _INSERT_NEW
    stored = {row.id: row for row in execute_prepared(conn, statement, parameters)}
    return [stored.get(incident.values["id"]) for incident in new]


def _insert_many(deduplicate: bool) -> sa.Select:
    """PostgreSQL: the statement of `insert_many`. The incidents are inserted first (a CTE), and the
    other rows follow those it returns: each event with its incident as inserted (events.from_arrays).
    `deduplicate`: an incident whose key is taken is skipped (ON CONFLICT on the partial unique
    index, which also settles two rows of the batch with one key), and so are its other rows."""
    rows = unnest_arrays({name: incidents.c[name].type for name in NEW_COLUMNS}, "incident_")
    insert = postgresql.insert(incidents).from_select(NEW_COLUMNS, sa.select(rows))
    if deduplicate:
        insert = insert.on_conflict_do_nothing(index_elements=[incidents.c.dedup_key], index_where=UNRESOLVED)
    inserted = insert.returning(*incidents.c).cte("inserted")

    def of_inserted(table: sa.Table, columns: Sequence[str], prefix: str) -> sa.Insert:
        if not deduplicate:
            return insert_arrays(table, columns, prefix)  # every incident was inserted
        given = unnest_arrays({name: table.c[name].type for name in columns}, prefix, ordinality="position")
        kept = (
            sa.select(*(given.c[name] for name in columns))
            .where(given.c.incident_id.in_(sa.select(inserted.c.id)))
            .order_by(given.c.position)  # links keep their order within each array
        )
        return table.insert().from_select(columns, kept)

    return sa.select(*inserted.c).add_cte(
        inserted,
        of_inserted(incident_alerts, _LINK_COLUMNS, "link_").cte("links"),
        events.from_arrays("event_", inserted).cte("timeline"),
        of_inserted(notification_outbox, outbox_queue.ENQUEUED, "notification_").cte("notification"),
    )


_INSERT_NEW = _insert_many(deduplicate=False)
_INSERT_DEDUPLICATED = _insert_many(deduplicate=True)


def insert_one(conn: Connection, new: NewIncident) -> Row | None:
    """Store a new incident with its rows, statement by statement; None (nothing written) when an
    unresolved incident already has its `dedup_key`."""
    insert = _insert_incident(tuple(new.values), conn.dialect.name)
    row = conn.execute(insert, prefixed(new.values, "incident_")).one_or_none()
    if row is None:
        return None
    links = Bound(incident_alerts.insert(), list(new.links)) if new.links else None
    for write in (links, events.insert_events(*new.timeline, dialect=conn.dialect.name),
                  outbox_queue.enqueue(new.notification)):
        if write is not None:
            write.execute(conn)
    return row


@functools.cache
def _insert_incident(columns: tuple[str, ...], dialect: str) -> sa.Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(incidents).values(bind(incidents, columns, "incident_"))
        .on_conflict_do_nothing(index_elements=[incidents.c.dedup_key], index_where=UNRESOLVED)
        .returning(*incidents.c)
    )


@dataclass(frozen=True)
class Grouping:
    """A create to fold into the unresolved incident of its `dedup_key`: its alerts, and the `details`
    of its `alert_grouped` event."""

    dedup_key: str
    now: datetime
    alert_ids: Sequence[uuid.UUID]
    details: Mapping[str, Any]


def group_into(conn: Connection, grouping: Grouping) -> Row | None:
    """Fold a create into the unresolved incident with its `dedup_key`: one more grouped request, its
    alerts linked (an alert already linked stays as it was) and its `alert_grouped` event. The
    incident as updated, or None (nothing written) when no unresolved one has the key."""
    if conn.dialect.name == "postgresql":
        return group_many(conn, [grouping])[0]
    row = conn.execute(_GROUP_INTO, {"key": grouping.dedup_key, "now": grouping.now}).one_or_none()
    if row is not None:
        event = events.event(row.id, "alert_grouped", at=grouping.now, details=grouping.details)
        for write in (link_bound(conn.dialect.name, row.id, grouping.alert_ids, grouping.now),
                      events.insert_events(event, dialect=conn.dialect.name)):
            if write is not None:
                write.execute(conn)
    return row


_NOW = sa.bindparam("now", type_=incidents.c.updated_at.type)
_GROUP_INTO = (
    incidents.update()
    .where(incidents.c.dedup_key == sa.bindparam("key"), incidents.c.status != "resolved")
    .values(grouped_count=incidents.c.grouped_count + 1, last_grouped_at=_NOW, updated_at=_NOW)
    .returning(*incidents.c)
)


def group_many(conn: Connection, groupings: Sequence[Grouping]) -> list[Row | None]:
    """PostgreSQL: `group_into` for any number of creates in one statement (PostgresStore's group
    commit hands it the groupings of the moment): each key's incident counted once per create, its
    alerts linked, one `alert_grouped` event per create, in their order. Each create's incident as
    the whole statement left it, or None where no unresolved incident has its key.

    In a storm every grouping of a key waits for that incident's row, and every commit for the
    lock PostgreSQL takes to queue a NOTIFY (the feed's trigger), held through the commit's WAL
    flush: one statement per batch makes one wait and one commit of many. Rows are locked in key
    order, so two batches sharing keys cannot deadlock."""
    by_key: dict[str, list[Grouping]] = {}
    for grouping in groupings:
        by_key.setdefault(grouping.dedup_key, []).append(grouping)
    keys = [{"key": key, "count": len(same), "now": max(g.now for g in same)} for key, same in by_key.items()]
    first_links: dict[tuple[str, uuid.UUID], dict[str, Any]] = {}
    for grouping in groupings:  # an alert two creates of a key bring is linked at the first one's time
        for alert_id in grouping.alert_ids:
            first_links.setdefault((grouping.dedup_key, alert_id),
                                   {"key": grouping.dedup_key, "alert_id": alert_id, "linked_at": grouping.now})
    timeline = [{"key": g.dedup_key, "details": dict(g.details), "created_at": g.now} for g in groupings]
    parameters = {**arrays(keys, ("key", "count", "now"), "group_"),
                  **arrays(list(first_links.values()), ("key", "alert_id", "linked_at"), "group_link_"),
                  **arrays(timeline, ("key", "details", "created_at"), "group_event_")}
    # Prepared: parsing and planning its parts was a third of a grouping's CPU in PostgreSQL; its
    # plan (each key through its unique index) is the same for any values.
    grouped = {row.dedup_key: row for row in execute_prepared(conn, _GROUP_MANY, parameters)}
    return [grouped.get(grouping.dedup_key) for grouping in groupings]


def _group_many() -> sa.Select:
    key_type, time_type = incidents.c.dedup_key.type, incidents.c.updated_at.type
    given = unnest_arrays({"key": key_type, "count": sa.Integer(), "now": time_type}, "group_", "given")
    locked = (
        sa.select(incidents.c.id, given.c.count, given.c.now)
        .join_from(given, incidents, incidents.c.dedup_key == given.c.key)
        .where(UNRESOLVED)
        .order_by(incidents.c.dedup_key)
        .with_for_update(of=incidents)
        .cte("locked")
    )
    grouped = (
        incidents.update()
        .where(incidents.c.id == locked.c.id)
        .values(grouped_count=incidents.c.grouped_count + locked.c.count, last_grouped_at=locked.c.now,
                updated_at=locked.c.now)
        .returning(*incidents.c)
        .cte("grouped")
    )
    link_given = unnest_arrays({"key": key_type, "alert_id": sa.Uuid(), "linked_at": time_type}, "group_link_",
                               "given_links")
    links = postgresql.insert(incident_alerts).from_select(
        _LINK_COLUMNS, sa.select(grouped.c.id, link_given.c.alert_id, link_given.c.linked_at)
        .join_from(link_given, grouped, grouped.c.dedup_key == link_given.c.key)
    ).on_conflict_do_nothing()
    event_given = unnest_arrays({"key": key_type, "details": incident_events.c.details.type, "created_at": time_type},
                                "group_event_", "given_events", ordinality="position")
    kind = sa.cast(sa.literal_column("'alert_grouped'"), incident_events.c.type.type)
    # Each event with its incident as the whole statement left it, as each create's answer shows it.
    timeline = events.with_incident(
        sa.select(grouped.c.id, kind, sa.null(), event_given.c.details, event_given.c.created_at, item_json(grouped))
        .join_from(event_given, grouped, grouped.c.dedup_key == event_given.c.key)
        .order_by(event_given.c.position)  # the serial ids of the events follow the creates' order
    )
    return sa.select(*grouped.c).add_cte(links.cte("links"), timeline.cte("timeline"))


_GROUP_MANY = _group_many()


def locked(conn: Connection, incident_pk: uuid.UUID) -> Row | None:
    """The incident, its row locked until the caller's transaction ends (SQLite: its write transaction)."""
    return conn.execute(_LOCKED, {"pk": incident_pk}).one_or_none()


_LOCKED = sa.select(*incidents.c).where(incidents.c.id == sa.bindparam("pk")).with_for_update()


def link_bound(dialect: str, incident_pk: uuid.UUID, alert_ids: Sequence[uuid.UUID], now: datetime) -> Bound | None:
    """The INSERT linking alerts to an incident, an alert already linked left as it was; None for none.
    PostgreSQL: rows as arrays, so that it runs with other writes (statements.execute_together)."""
    rows = links(incident_pk, alert_ids, now)
    if not rows:
        return None
    if dialect == "postgresql":
        return Bound(_LINK_ARRAYS, arrays(rows, _LINK_COLUMNS, "link_"))
    return Bound(sqlite.insert(incident_alerts).on_conflict_do_nothing(), rows)


_LINK_ARRAYS = postgresql.insert(incident_alerts).from_select(
    _LINK_COLUMNS, sa.select(unnest_arrays({name: incident_alerts.c[name].type for name in _LINK_COLUMNS}, "link_"))
).on_conflict_do_nothing()


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

    `together` are further independent writes made in the same statement (statements.execute_together).
    """
    event = events.event(pk, "assigned", at=now, details={"assigned_to": assignee})
    parameters = {"pk": pk, "was_assigned_to": None, **prefixed({"assigned_to": assignee, "updated_at": now}, "new_")}
    postgres = conn.dialect.name == "postgresql"
    assigned, assigned_event = _assign_if_unassigned(postgres)
    if postgres:
        # One statement: the event is written from the UPDATE's RETURNING, so only when it assigned.
        event_values = events.parameters([event], "assigned", of_source=True)
        rows = execute_together(conn, Bound(assigned, parameters), Bound(assigned_event, event_values), *together)
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
    if conn.dialect.name == "postgresql":
        rows = conn.execute(*change_if_unchanged(row, values, timeline, unchanged=unchanged)).all()
        return rows[0] if rows else None
    rows = conn.execute(_update_if_unchanged(tuple(values), tuple(unchanged)),
                        _unchanged_parameters(row, values, unchanged)).all()
    if rows:
        events.insert_events(*timeline, dialect=conn.dialect.name).execute(conn)
    return rows[0] if rows else None


def change_if_unchanged(
    row: Row, values: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]], *, unchanged: Sequence[str],
) -> tuple[sa.Select, dict[str, Any]]:
    """PostgreSQL: `update_if_unchanged`'s one statement (built once per shape) and its parameters."""
    statement = _with_events_from(_update_if_unchanged(tuple(values), tuple(unchanged)), len(timeline))
    return statement, {**_unchanged_parameters(row, values, unchanged),
                       **events.parameters(timeline, "event", of_source=True)}


def _unchanged_parameters(row: Row, values: Mapping[str, Any], unchanged: Sequence[str]) -> dict[str, Any]:
    return {"pk": row.id, **{f"was_{name}": row._mapping[name] for name in unchanged}, **prefixed(values, "new_")}


@functools.cache
def _update_if_unchanged(columns: tuple[str, ...], unchanged: tuple[str, ...]) -> sa.Update:
    # Built once per shape, its values bound at execution (statements.Bound): a CTE returning every column
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


def acknowledge_open(
    incident_id: str, values: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]], *, was_status: str,
    enrich: bool,
) -> tuple[sa.Select, dict[str, Any]]:
    """PostgreSQL: write `values` and the `timeline` events (patches.Patch.acknowledged: worked out
    for an open incident without reading it) to the incident `incident_id` if its status is still
    `was_status`, and answer it as `incident_with_alerts` reads one: a PATCH's read and write in one
    round trip. The statement (built once per shape) and its parameters. No row when it changed
    nothing (no such incident, or no longer open: the caller's read-then-write path decides what
    that means). Of concurrent ones exactly one changes the row: the others, having waited for it,
    find it no longer open."""
    statement = _acknowledge_open(tuple(values), len(timeline), enrich)
    return statement, {"incident_id": incident_id, "was_status": was_status, **prefixed(values, "new_"),
                       **events.parameters(timeline, "event", of_source=True)}


@functools.cache
def _acknowledge_open(columns: tuple[str, ...], event_count: int, enrich: bool) -> sa.Select:
    changed = (
        incidents.update()
        .where(incidents.c.incident_id == sa.bindparam("incident_id"), incidents.c.status == sa.bindparam("was_status"))
        .values(bind(incidents, columns, "new_"))
        .returning(*incidents.c)
        .cte("acknowledged")
    )
    alert_columns, source = platform_alerts.alert_selection(enrich)
    return (
        sa.select(*changed.c, *alert_columns)
        .select_from(changed.outerjoin(source, incident_alerts.c.incident_id == changed.c.id))
        .order_by(incident_alerts.c.linked_at, incident_alerts.c.alert_id)
        .add_cte(events.from_rows(event_count, "event", source=changed).cte("timeline"))
    )


def link_alerts(conn: Connection, incident_pk: uuid.UUID, alert_ids: Iterable[uuid.UUID], now: datetime) -> int:
    """Link alerts to an incident; an alert already linked stays as it was. Returns how many were new."""
    insert = link_bound(conn.dialect.name, incident_pk, list(alert_ids), now)
    return 0 if insert is None else insert.execute(conn).rowcount


def add_links(conn: Connection, incident_pk: uuid.UUID, alert_ids: Sequence[uuid.UUID], now: datetime) -> Row:
    """Link alerts not linked yet, with their `alerts_linked` event; the incident as updated."""
    link_alerts(conn, incident_pk, alert_ids, now)
    row = update_incident(incident_pk, {"updated_at": now}).execute(conn).one()
    # After the update: the event's incident is the one it left.
    events.record_event(conn, incident_pk, "alerts_linked", at=now, details={"alert_ids": [str(a) for a in alert_ids]})
    return row


def write_change(
    conn: Connection, incident_pk: uuid.UUID, values: Mapping[str, Any], timeline: Sequence[Mapping[str, Any]],
    *together: Bound | None,
) -> Row:
    """Write a change to an incident the caller holds locked, with its events (and the independent
    writes `together`, an outbox row say); the changed row."""
    update = update_incident(incident_pk, values)
    if conn.dialect.name == "postgresql" and timeline:
        # One statement: the events are written from the UPDATE's RETURNING, with the incident as changed.
        changed = Bound(_with_events_from(update.statement, len(timeline)),
                        {**update.parameters, **events.parameters(timeline, "event", of_source=True)})
        (row,) = execute_together(conn, changed, *together)
    else:  # SQLite: the events after the update, which their statement then reads
        (row,) = execute_together(conn, update, events.insert_events(*timeline, dialect=conn.dialect.name), *together)
    return row


def linked_alerts(
    conn: Connection, incident_pks: Sequence[uuid.UUID], *, enrich: bool = False
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Linked alerts per incident, oldest link first, with the alert's own fields if `enrich`
    (platform_alerts: only where that table is)."""
    rows = conn.execute(_linked_alerts(enrich), {"incident_pks": list(incident_pks)}).mappings()
    linked: dict[uuid.UUID, list[dict[str, Any]]] = {pk: [] for pk in incident_pks}
    for row in rows:
        linked[row["linked_incident_id"]].append(platform_alerts.alert_entry(row))
    return linked


@functools.cache
def _linked_alerts(enrich: bool) -> sa.Select:
    # Built once (a grouped create reads its incident's alerts, hundreds in a storm, on every request).
    columns, source = platform_alerts.alert_selection(enrich)
    return (
        sa.select(incident_alerts.c.incident_id.label("linked_incident_id"), *columns)
        .select_from(source)
        .where(incident_alerts.c.incident_id.in_(sa.bindparam("incident_pks", expanding=True)))
        .order_by(incident_alerts.c.linked_at, incident_alerts.c.alert_id)
    )


@functools.cache
def linked_alerts_json(enrich: bool) -> sa.Select:
    """PostgreSQL: the linked alerts of incidents (their ids bound as the array `incident_pks`) as
    two JSON texts each, beside its id (`incident_pk`): its document's `alerts` (each alert's url:
    `alert_url` followed by its id; `alert_url_json` is that prefix as the content of a JSON
    string) and `alert_ids`, in `linked_alerts`' order (documents.AlertsJson). Built once.

    The links are sorted once, narrow, in a subquery, and both aggregates take its rows in that
    order: each aggregate's own ORDER BY sorted its input again, and building the texts before the
    sort made it sort them (0.65 → 0.54 ms at 360 alerts, docs/performance.md). PostgreSQL
    aggregates a subquery's rows in the order it returns them; `test_documents.py` holds the order
    with links stored out of it."""
    wanted = sa.func.unnest(sa.bindparam("incident_pks", type_=postgresql.ARRAY(sa.Uuid()))).table_valued(
        sa.column("pk", sa.Uuid()), name="wanted").render_derived()
    columns, source = platform_alerts.alert_text_selection(enrich)
    link = (
        sa.select(*columns)
        .select_from(source)
        .where(incident_alerts.c.incident_id == wanted.c.pk)
        .order_by(incident_alerts.c.linked_at, incident_alerts.c.alert_id)
        .correlate(wanted)
        .subquery("link")
    ).c
    alert = platform_alerts.alert_json_text(enrich, sa.bindparam("alert_url", type_=sa.Text),
                                            sa.bindparam("alert_url_json", type_=sa.Text), link)
    # The objects' texts joined into an array's: json_agg would parse each text back into JSON.
    constant = platform_alerts.constant
    alerts = sa.func.concat(constant("["), sa.func.string_agg(alert, constant(",")),
                            constant("]"))  # concat skips a null: "[]" for none
    # A UUID's text needs no escaping; `||` is null when string_agg is (no alerts), "[]" then.
    ids = constant('["') + sa.func.string_agg(link.alert_id_text, constant('","')) + constant('"]')
    # As text: psycopg2 would otherwise decode json into Python objects.
    texts = sa.select(alerts.label("alerts"), sa.func.coalesce(ids, constant("[]")).label("alert_ids")).lateral("texts")
    return sa.select(wanted.c.pk.label("incident_pk"), texts.c.alerts, texts.c.alert_ids).select_from(
        wanted).join(texts, sa.true())


def alert_url_json(prefix: str) -> str:
    """The content of the JSON string of `prefix`: what `linked_alerts_json` binds as `alert_url_json`."""
    return json.dumps(prefix)[1:-1]


@functools.cache
def incident_with_alerts(enrich: bool, for_update: bool) -> sa.Select:
    """An incident (bound as `incident_id`) and its linked alerts in one statement, one row per
    alert: the hot read path, one round trip. `for_update` locks the incident's row (PostgreSQL;
    SQLite's write transaction holds the lock). Built once, so compiled and cache-keyed once."""
    columns, source = platform_alerts.alert_selection(enrich)
    query = (
        sa.select(*incidents.c, *columns)
        .select_from(incidents.outerjoin(source, incident_alerts.c.incident_id == incidents.c.id))
        .where(incidents.c.incident_id == sa.bindparam("incident_id"))
        .order_by(incident_alerts.c.linked_at, incident_alerts.c.alert_id)
    )
    return query.with_for_update(of=incidents) if for_update else query


def incident_and_alerts(rows: Sequence[Row]) -> tuple[Row, list[dict[str, Any]]] | None:
    """What `incident_with_alerts` read: the incident and its alerts, or None."""
    if not rows:
        return None
    alerts = [platform_alerts.alert_entry(row._mapping) for row in rows if row._mapping["linked_alert_id"] is not None]
    return rows[0], alerts

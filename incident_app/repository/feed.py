"""Reading the live feed: timeline events in feed order, each with its incident as it stood after the change.

Why (writing transaction, id) and a horizon. Event ids come from a sequence before their
transactions commit, so they commit out of order. Each event records the id of the transaction
that wrote it (xact_id, migration 0005), and the feed is read in (xact_id, id) order, but only
below the reading snapshot's xmin: every transaction numbered below it has ended, so nothing can
still appear there. A reader that stopped at cursor C has seen every event before C that will
ever exist; nothing is missed, nothing repeated, whichever worker or replica reads. The cost is
latency, not exactness: an event waits while an older writing transaction is still open
(milliseconds for this service's transactions; an operator's transaction left open anywhere in
the cluster holds it back). Assigning a position at commit under a lock would serialise every
writer's commit (and its WAL flush); holding gaps open for a while is not exact.

SQLite: its writers take turns on one lock, so ids commit in order and the id alone is the feed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app.feed.cursor import Cursor
from incident_app.repository.items import item_json
from incident_app.tables import incident_events, incidents

EVENT_COLUMNS = ("xact_id", "id", "type", "actor", "details", "created_at")


def event_columns() -> list[sa.ColumnElement[object]]:
    """What a reader of the feed selects from the timeline joined with the incidents: the EVENT_COLUMNS
    (as event_*), the incident's `incident_id`, and `incident`, its list item's JSON text as it stood
    after the event's change (migration 0010), or, for an event written without one (before 0010, or
    by hand), as it stands."""
    e = incident_events.c
    return [*(e[name].label(f"event_{name}") for name in EVENT_COLUMNS), incidents.c.incident_id,
            sa.func.coalesce(e.incident, item_json(incidents)).label("incident")]


@dataclass(frozen=True)
class Page:
    """Events after a cursor, in feed order; `held`: later events have committed that may not be
    delivered yet (an older transaction is still open), so the reader should look again soon."""

    rows: Sequence[Row]
    held: bool


def read_after(conn: Connection, after: Cursor, *, limit: int) -> Page:
    """Up to `limit` events after `after`, with their incidents' columns (event columns as event_*)."""
    parameters = {"xact_id": after.xact_id, "event_id": after.event_id, "limit": limit}
    if conn.dialect.name != "postgresql":
        return Page(conn.execute(_page(False), parameters).all(), held=False)
    rows = conn.execute(_page(True), parameters).all()
    # The first row always comes (the horizon's); the page's columns are null when it is empty.
    held = rows[0].held
    return Page([row for row in rows if row.event_id is not None], held=held)


def head(conn: Connection) -> Cursor:
    """A cursor before every event not yet deliverable and after every other: "from now"."""
    if conn.dialect.name != "postgresql":
        return Cursor(0, conn.execute(sa.select(sa.func.coalesce(sa.func.max(incident_events.c.id), 0))).scalar_one())
    return Cursor(conn.execute(sa.select(_horizon())).scalar_one(), 0)


def _horizon() -> sa.ColumnElement[int]:
    # The statement's own snapshot: what it reads and the horizon it reads under are one view.
    xmin = sa.func.pg_snapshot_xmin(sa.func.pg_current_snapshot())
    return sa.cast(sa.cast(xmin, sa.Text), sa.BigInteger)


@functools.cache
def _page(postgres: bool) -> sa.Select:
    e = incident_events.c
    position = sa.tuple_(e.xact_id, e.id)
    after = sa.tuple_(sa.bindparam("xact_id", type_=sa.BigInteger), sa.bindparam("event_id", type_=sa.BigInteger))
    page = (
        sa.select(*event_columns())
        .join_from(incident_events, incidents, incidents.c.id == e.incident_id)
        .where(position > after)
        .order_by(e.xact_id, e.id)
        .limit(sa.bindparam("limit"))
    )
    if not postgres:
        return page
    xmin = sa.select(_horizon().label("xmin")).cte("xmin").prefix_with("MATERIALIZED")
    # Once per read, not per row: whether committed events wait above the horizon.
    held = sa.exists().where(e.xact_id >= xmin.c.xmin, position > after)
    horizon = sa.select(xmin.c.xmin, held.label("held")).cte("horizon").prefix_with("MATERIALIZED")
    deliverable = page.where(e.xact_id < sa.select(xmin.c.xmin).scalar_subquery()).subquery("page")
    return (
        sa.select(horizon.c.held, *deliverable.c)
        .select_from(horizon.outerjoin(deliverable, sa.true()))
        .order_by(deliverable.c.event_xact_id, deliverable.c.event_id)
    )

"""Queries on incidents and their linked alerts. Transactions belong to the caller."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from incident_app.tables import UTCDateTime, incident_alerts, incidents


@dataclass(frozen=True)
class ListFilters:
    status: str | None = None
    severity: str | None = None
    service: str | None = None

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        return [incidents.c[name] == value for name, value in vars(self).items() if value is not None]


def insert_incident(conn: Connection, values: Mapping[str, Any]) -> Row:
    return conn.execute(incidents.insert().values(**values).returning(*incidents.c)).one()


def find_incident(conn: Connection, incident_id: str, *, for_update: bool = False) -> Row | None:
    query = sa.select(*incidents.c).where(incidents.c.incident_id == incident_id)
    if for_update:
        # PostgreSQL locks the row; on SQLite the write transaction already holds the lock.
        query = query.with_for_update()
    return conn.execute(query).one_or_none()


def update_incident(conn: Connection, pk: uuid.UUID, values: Mapping[str, Any]) -> Row:
    statement = incidents.update().where(incidents.c.id == pk).values(**values).returning(*incidents.c)
    return conn.execute(statement).one()


def list_incidents(conn: Connection, filters: ListFilters, *, limit: int, offset: int) -> tuple[list[Row], int]:
    where = filters.clauses()
    page = conn.execute(
        sa.select(*incidents.c)
        .where(*where)
        .order_by(incidents.c.created_at.desc(), incidents.c.incident_id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    if offset == 0 and len(page) < limit:
        total = len(page)  # the whole result is on this page: no need to count it
    else:
        total = conn.execute(sa.select(sa.func.count()).select_from(incidents).where(*where)).scalar_one()
    return page, total


def link_alerts(conn: Connection, incident_pk: uuid.UUID, alert_ids: Iterable[uuid.UUID], now: datetime) -> int:
    """Link alerts to an incident; an alert already linked stays as it was. Returns how many were new."""
    rows = [{"incident_id": incident_pk, "alert_id": alert_id, "linked_at": now} for alert_id in alert_ids]
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
    if _platform_alerts_present(conn):
        try:
            # A savepoint, so that a failed join leaves the caller's transaction usable.
            with conn.begin_nested():
                return _linked_alerts(conn, incident_pks, enrich=True)
        except sa.exc.ProgrammingError:
            # The platform's table went away or changed since it was looked up: links alone will do.
            forget_platform_alerts_table()
    return _linked_alerts(conn, incident_pks, enrich=False)


def _linked_alerts(
    conn: Connection, incident_pks: Sequence[uuid.UUID], *, enrich: bool
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    columns: list[Any] = [incident_alerts.c.incident_id, incident_alerts.c.alert_id, incident_alerts.c.linked_at]
    source: Any = incident_alerts
    if enrich:
        a = _platform_alerts.c
        columns += [
            a.id.is_not(None).label("known"),
            sa.cast(a.service, sa.Text).label("service"),
            sa.cast(a.severity, sa.Text).label("severity"),
            sa.cast(a.message, sa.Text).label("message"),
            a.timestamp,
        ]
        source = incident_alerts.outerjoin(_platform_alerts, a.id == incident_alerts.c.alert_id)
    rows = conn.execute(
        sa.select(*columns)
        .select_from(source)
        .where(incident_alerts.c.incident_id.in_(list(incident_pks)))
        .order_by(incident_alerts.c.linked_at, incident_alerts.c.alert_id)
    ).mappings()
    linked: dict[uuid.UUID, list[dict[str, Any]]] = {pk: [] for pk in incident_pks}
    for row in rows:
        entry = {"alert_id": row["alert_id"], "linked_at": row["linked_at"]}
        # An alert the platform's table does not hold gets no made-up nulls, only its link.
        if row.get("known"):
            entry.update({name: row[name] for name in _ALERT_COLUMNS[1:]})
        linked[row["incident_id"]].append(entry)
    return linked

"""The platform's Alert Ingestion Service may keep its alerts in the same PostgreSQL database. It is
optional: its presence is looked up, cached for a minute per database, and linked alerts are enriched
with the alert's own fields only when it is there (PostgresStore; SQLite never has it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.statements import rfc3339_text
from incident_app.tables import UTCDateTime, incident_alerts
from incident_app.transactions import autocommitting

T = TypeVar("T")

ALERT_COLUMNS = ("id", "service", "severity", "message", "timestamp")
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
TABLE_TTL = 60.0
_table_seen: dict[str, tuple[float, bool]] = {}


def forget_table() -> None:
    """Look the platform's alerts table up again on next use, e.g. after it was created or dropped."""
    _table_seen.clear()


def present(conn: Connection) -> bool:
    """Whether the platform's alerts table is there with the columns read from it (PostgreSQL)."""
    key = str(conn.engine.url)
    seen = _table_seen.get(key)
    if seen is None or time.monotonic() - seen[0] > TABLE_TTL:
        found = conn.execute(
            sa.text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'alerts' AND table_name = 'alerts'"
            )
        ).scalars()
        seen = (time.monotonic(), set(ALERT_COLUMNS) <= set(found))
        _table_seen[key] = seen
    return seen[1]


def enriched_if_possible(conn: Connection, query: Callable[[bool], T]) -> T:
    """Run `query` with the platform's alert fields when its table is there, else without."""
    if present(conn):
        autocommit = autocommitting(conn)
        try:
            # In a transaction, a savepoint, so that a failed join leaves it usable.
            with contextlib.nullcontext() if autocommit else conn.begin_nested():
                return query(True)
        except sa.exc.ProgrammingError:
            # The platform's table went away or changed since it was looked up: links alone will do.
            forget_table()
    return query(False)


def alert_selection(enrich: bool) -> tuple[list[Any], Any]:
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


def alert_json_text(
    enrich: bool, url_prefix: sa.ColumnElement[str], url_prefix_json: sa.ColumnElement[str], link: Any,
) -> sa.ColumnElement[str]:
    """PostgreSQL: a linked alert as the JSON text of the object `alert_entry` makes of its row (the
    platform's fields only for an alert its table holds) followed by its `url` (`url_prefix` then
    the alert's id; `url_prefix_json` is the same prefix as the content of a JSON string), as
    documents.incident_json writes it. `link` holds the columns of `alert_text_selection`'s rows.

    A link alone, the storm's every alert, is written as text: none of its values needs escaping (a
    UUID, a time as rfc3339_text writes it, the prefix escaped before it is bound), and building
    it with json_build_object was a third of what a grouped create's answer cost PostgreSQL at 360
    alerts (docs/performance.md). An alert with the platform's fields, free text among them, goes
    through json_build_object, which escapes them."""
    alert_id = link.alert_id_text
    linked = sa.func.concat(constant('{"alert_id":"'), alert_id, constant('","linked_at":"'),
                            rfc3339_text(link.linked_at), constant('","url":"'), sa.cast(url_prefix_json, sa.Text),
                            alert_id, constant('"}'))
    if not enrich:
        return linked
    known = {"alert_id": link.linked_alert_id, "linked_at": rfc3339_text(link.linked_at),
             "service": link.alert_service, "severity": link.alert_severity, "message": link.alert_message,
             "timestamp": rfc3339_text(link.alert_timestamp),
             "url": sa.func.concat(sa.cast(url_prefix, sa.Text), alert_id)}
    return sa.case((link.alert_known, sa.cast(_json_object(known), sa.Text)), else_=linked)


def alert_text_selection(enrich: bool) -> tuple[list[Any], Any]:
    """`alert_selection`'s columns with the alert's id as text (`alert_id_text`), which
    `alert_json_text` writes into each alert's JSON twice, and the tables they come from."""
    columns, source = alert_selection(enrich)
    return [*columns, sa.cast(incident_alerts.c.alert_id, sa.Text).label("alert_id_text")], source


def constant(text: str) -> sa.ColumnElement[str]:
    """A constant text in the statement itself (not a parameter: concat() would not know its type)."""
    return sa.literal_column("'" + text.replace("'", "''") + "'", sa.Text)


def _json_object(pairs: Mapping[str, sa.ColumnElement[Any]]) -> sa.ColumnElement[Any]:
    # The names as SQL literals (constants here), as pages.page_json writes its keys.
    arguments = (x for name, value in pairs.items() for x in (sa.literal_column(f"'{name}'"), value))
    return sa.func.json_build_object(*arguments)


def alert_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    entry = {"alert_id": row["linked_alert_id"], "linked_at": row["linked_at"]}
    # An alert the platform's table does not hold gets no made-up nulls, only its link.
    if row.get("alert_known"):
        entry.update({name: row[f"alert_{name}"] for name in ALERT_COLUMNS[1:]})
    return entry

"""An incident's list item (contract 2: every field but `alerts` and `alert_ids`) as JSON text, built
by the database from documents.FIELDS, from any row that has the columns of `tables.incidents`.

The timeline writes it beside each event (migration 0010) from the row its statement changed (a
data-modifying CTE's RETURNING) or, for an event written by a statement of its own after the
change, from the incident as that statement reads it: the incident as it stood after the change,
which the live feed and the webhooks send. tests/test_documents.py holds it equal to
documents.summary_json on both databases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression

from incident_app import documents
from incident_app.statements import rfc3339_text
from incident_app.tables import incidents


def item_values(columns: Mapping[str, Any]) -> list[sa.ColumnElement[Any]]:
    """PostgreSQL: the list item's fields, in order, as values JSON writes as the API does, labelled
    by name, from the columns of `incidents` found by name in `columns` (a `.c`, say)."""

    def value(field: documents.Field) -> sa.ColumnElement[Any]:
        if field.kind == documents.SECONDS:
            # EXTRACT's exact numeric, then a double: the float Python's timedelta gives.
            later = columns[field.since]
            return sa.cast(sa.extract("epoch", later - columns["created_at"]), postgresql.DOUBLE_PRECISION)
        column = columns[field.name]
        if field.kind == documents.TIMESTAMP:
            return rfc3339_text(column)
        return column

    return [value(field).label(field.name) for field in documents.FIELDS]


class _item_json(expression.FunctionElement):
    """The list item's JSON text of the incident whose columns are the clauses, in the order of
    `tables.incidents`' columns (see `item_json`)."""

    type = sa.Text()
    inherit_cache = True


def item_json(source: sa.FromClause) -> sa.ColumnElement[str]:
    """The list item's JSON text of each row of `source` (`incidents`, or a CTE returning its columns)."""
    return _item_json(*(source.c[column.name] for column in incidents.columns))


def _columns(element: _item_json) -> dict[str, Any]:
    # The clauses by the names of incidents' columns.
    return {column.name: clause for column, clause in zip(incidents.columns, element.clauses, strict=True)}


@compiles(_item_json, "postgresql")
def _item_json_postgresql(element, compiler, **kw) -> str:
    values = item_values(_columns(element))
    pairs = (part for value in values for part in (sa.literal_column(f"'{value.name}'"), value.element))
    return compiler.process(sa.cast(sa.func.json_build_object(*pairs), sa.Text), **kw)


@compiles(_item_json)
def _item_json_elsewhere(element, compiler, **kw) -> str:
    # SQLite keeps a UUID as 32 hex digits, a time as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC, the notes
    # as JSON text.
    columns = _columns(element)

    def text(value: Any) -> Any:
        return sa.type_coerce(value, sa.String())  # so that + is SQL's ||

    def uuid(column: Any) -> Any:
        parts = [text(sa.func.substr(column, start, length)) for start, length in
                 ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))]
        joined = parts[0]
        for part in parts[1:]:
            joined = joined + "-" + part
        return joined

    def microseconds(time: Any) -> Any:
        whole = sa.cast(sa.func.strftime("%s", sa.func.substr(time, 1, 19)), sa.Integer)
        return whole * 1000000 + sa.cast(sa.func.substr(time, 21, 6), sa.Integer)

    def seconds(later: Any, earlier: Any) -> Any:
        # Whole microseconds, then one division: the float Python's timedelta gives, where
        # tables.seconds_between's sum of two float parts can be a digit off.
        return (microseconds(later) - microseconds(earlier)) / sa.literal_column("1000000.0")

    def value(field: documents.Field) -> Any:
        if field.kind == documents.SECONDS:
            return seconds(columns[field.since], columns["created_at"])
        column = columns[field.name]
        if field.kind == documents.TIMESTAMP:
            return text(sa.func.replace(column, " ", "T")) + "+00:00"  # null stays null
        if field.kind == documents.UUID:
            return uuid(column)
        if field.kind == documents.NOTES:
            return sa.func.json(column)
        return column

    pairs = (part for field in documents.FIELDS for part in (sa.literal_column(f"'{field.name}'"), value(field)))
    return compiler.process(sa.func.json_object(*pairs), **kw)

"""Pages of incidents, newest first, with the number matching the filters: as rows (SqliteStore), or
as the API's JSON written by PostgreSQL (PostgresStore), both from documents.FIELDS."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Row

from incident_app.repository.items import item_values
from incident_app.tables import incident_counts, incidents


@dataclass(frozen=True)
class ListFilters:
    status: str | None = None
    severity: str | None = None
    service: str | None = None
    dedup_key: str | None = None

    def clauses(self, table: sa.Table = incidents) -> list[sa.ColumnElement[bool]]:
        """Equality on each given field, on `incidents` or on a table with the same columns (incident_counts)."""
        return [table.c[name] == value for name, value in vars(self).items() if value is not None]

    def given(self) -> dict[str, str]:
        return {name: value for name, value in vars(self).items() if value is not None}


def _total(equal: Callable[[sa.Table], list[sa.ColumnElement[bool]]], filtered_on: Iterable[str]) -> sa.Select:
    """The number of incidents matching the filters: the triggers' counts (a few rows to sum instead
    of up to every matching incident), unless a filter is one they do not count by (dedup_key: the
    few incidents of one key are counted from its index)."""
    if set(filtered_on) <= set(incident_counts.c.keys()):
        return sa.select(sa.func.coalesce(sa.func.sum(incident_counts.c.count), 0)).where(*equal(incident_counts))
    return sa.select(sa.func.count()).select_from(incidents).where(*equal(incidents))


def list_incidents(conn: Connection, filters: ListFilters, *, limit: int, offset: int) -> tuple[list[Row], int]:
    """A page, newest first, and the number of incidents matching the filters (`_total`), in one
    statement (one snapshot)."""
    counted = _total(filters.clauses, filters.given())
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


@functools.cache
def page_json(filtered_on: tuple[str, ...]) -> sa.Select:
    """PostgreSQL: what `list_incidents` reads, as the API's JSON text, built by the database, for the
    filters named (their values, `limit` and `offset` bound at execution).

    Turning 50 rows into Python values and then into JSON was a third of a list request's time in
    the worker; PostgreSQL builds the same document in C. tests/test_documents.py holds it equal to
    the page SqliteStore builds from `list_incidents`.
    """
    # Built once per combination of filters: compiled and cache-keyed once.
    def equal(table: sa.Table) -> list[sa.ColumnElement[bool]]:
        return [table.c[name] == sa.bindparam(name) for name in filtered_on]

    newest_first = (incidents.c.created_at.desc(), incidents.c.incident_id.desc())
    page = (
        sa.select(incidents).where(*equal(incidents)).order_by(*newest_first)
        .limit(sa.bindparam("limit")).offset(sa.bindparam("offset"))
        .subquery("page")
    )

    # Each item is a row of the API's fields, turned into a JSON object as a whole (json_agg of the
    # row): 0.09 ms less per page than naming every field in a json_build_object.
    item = sa.select(*item_values(page.c)).subquery("item")
    # The RFC 3339 text of a time in UTC sorts as the time does, byte by byte.
    newest_item_first = (item.c.created_at.collate("C").desc(), item.c.incident_id.desc())
    items = sa.func.json_agg(postgresql.aggregate_order_by(item.table_valued(), *newest_item_first))
    total = _total(equal, filtered_on)
    pairs = {
        "incidents": sa.func.coalesce(items, sa.literal_column("'[]'::json")),
        "total": total.scalar_subquery(),
        "limit": sa.bindparam("limit"),
        "offset": sa.bindparam("offset"),
    }
    document = sa.func.json_build_object(*(x for key, v in pairs.items() for x in (sa.literal_column(f"'{key}'"), v)))
    # As text: psycopg2 would otherwise decode the json into Python objects.
    return sa.select(sa.cast(document, sa.Text).label("page")).select_from(item)

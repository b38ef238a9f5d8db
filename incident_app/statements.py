"""A kit for statements built once per shape and run with their values bound: `Bound`, the
PostgreSQL arrays that carry many rows in one statement, and several writes run as one."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult


@dataclass(frozen=True)
class Bound:
    """A statement and the values it runs with this time.

    `statement` is built once per shape, its values bind parameters (see `bind`), and reused:
    SQLAlchemy then neither builds it again nor computes its cache key, which cost a create 1.1 ms
    of its 6 when its two statements were built anew around their values on every request.
    `parameters` is one set of values, or a list of them (executemany: not for execute_together on
    PostgreSQL).
    """

    statement: sa.Executable
    parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]

    def execute(self, conn: Connection) -> CursorResult[Any]:
        return conn.execute(self.statement, self.parameters)


def rfc3339_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """PostgreSQL: a time as documents.rfc3339 writes it (UTC, always microseconds), for JSON it builds."""
    return sa.func.to_char(sa.func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')


def bind(table: sa.Table, columns: Sequence[str], prefix: str) -> dict[str, sa.BindParameter[Any]]:
    """Bind parameters for `columns` of `table`, named `prefix` + column, typed as the columns."""
    return {name: sa.bindparam(prefix + name, type_=table.c[name].type) for name in columns}


def prefixed(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`values` under the names `bind` gives their parameters."""
    return {prefix + name: value for name, value in values.items()}


def unnest_arrays(
    columns: Mapping[str, Any], prefix: str, name: str | None = None, *, ordinality: str | None = None
) -> sa.TableValuedAlias:
    """PostgreSQL: rows given as one array per column (`arrays` makes them), `columns` mapping each
    column's name to its type, bound as `prefix` + name: one statement, built once, for any number.
    `ordinality` names a column numbering the rows from 1, in the arrays' order."""
    def array(type_: Any) -> postgresql.ARRAY[Any]:
        # dimensions=1: a JSON value that is a list is one element, not a further dimension.
        return postgresql.ARRAY(postgresql.JSONB() if isinstance(type_, sa.JSON) else type_, dimensions=1)

    values = sa.func.unnest(*(sa.bindparam(prefix + column, type_=array(type_)) for column, type_ in columns.items()))
    table = values.table_valued(*(sa.column(column, type_) for column, type_ in columns.items()),
                                with_ordinality=ordinality)
    return table.render_derived(name)


def insert_arrays(table: sa.Table, columns: Sequence[str], prefix: str) -> sa.Insert:
    """PostgreSQL: the INSERT of any number of rows of `table`, given as arrays (`unnest_arrays`)."""
    rows = unnest_arrays({name: table.c[name].type for name in columns}, prefix)
    return table.insert().from_select(columns, sa.select(rows))


def arrays(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], prefix: str) -> dict[str, list[Any]]:
    """The parameters of `unnest_arrays` (and `insert_arrays`) for `rows`: a column a row lacks is null."""
    return {prefix + name: [row.get(name) for row in rows] for name in columns}


def execute_together(conn: Connection, first: Bound, *others: Bound | None) -> list[sa.Row]:
    """Run `first` and the writes `others`, returning the rows of `first`.

    PostgreSQL runs them as one statement, the others as data-modifying CTEs: one round trip.
    They share one snapshot there, so none of them may depend on another's effect (foreign keys
    to a row inserted by `first` are fine: they are checked at the end of the statement). SQLite
    runs them one after the other, `first` first. None in `others` is skipped. Their parameters
    share one namespace: each part's must be its own.
    """
    writes = [statement for statement in others if statement is not None]
    if conn.dialect.name == "postgresql" and writes:
        parameters: dict[str, Any] = {}
        for part in (first, *writes):
            parameters.update(part.parameters)  # type: ignore[arg-type]  # dicts on PostgreSQL
        if len(parameters) != sum(len(part.parameters) for part in (first, *writes)):
            raise ValueError("statements run together share a parameter name")
        statement = _together(first.statement, tuple(part.statement for part in writes))
        return _rows(conn.execute(statement, parameters))
    rows = _rows(first.execute(conn))
    for statement in writes:
        statement.execute(conn)
    return rows


def _rows(result: CursorResult[Any]) -> list[sa.Row]:
    # A `first` without RETURNING (an UPDATE) gives no rows: asking for them would raise.
    return result.all() if result.returns_rows else []


@functools.lru_cache(maxsize=256)
def _together(first: sa.Executable, writes: tuple[sa.UpdateBase, ...]) -> sa.Executable:
    # Keyed by the statements themselves, built once per shape: composed once per combination
    # (bounded all the same, should a statement built per request ever come here).
    return first.add_cte(*(statement.cte(f"together_{index}") for index, statement in enumerate(writes)))


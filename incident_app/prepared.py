"""Server-side prepared statements for the hottest reads: PostgreSQL parses and plans them once per
connection instead of on every request, which was half of what it spent on a get one (README, Performance)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult

from incident_app.transactions import autocommitting

# The psycopg2 dialect numbering its parameters $1, $2 … writes the text PREPARE takes.
_NUMBERED = postgresql.psycopg2.dialect(paramstyle="numeric_dollar")
# What EXECUTE answers when the session's statement is gone (DISCARD ALL, say) or no longer fits
# the tables ("cached plan must not change result type", after a column's type changed).
_PREPARED_STATEMENT_LOST = {"26000", "0A000"}


@dataclass(frozen=True)
class _Prepared:
    name: str
    prepare: str
    execute: sa.TextualSelect
    renamed: Mapping[str, str]  # a parameter's name in the statement → in `execute`


@functools.lru_cache(maxsize=64)
def _prepared(statement: sa.Select) -> _Prepared:
    compiled = statement.compile(dialect=_NUMBERED)
    name = "incident_" + hashlib.sha1(compiled.string.encode()).hexdigest()[:16]
    # EXECUTE's arguments in $n order, named anew: a literal SQLAlchemy bound while building the
    # statement (a format string, say) keeps its value, and every argument keeps its type.
    positions = compiled.positiontup or ()
    arguments = [
        sa.bindparam(f"prepared_{index}", compiled.binds[parameter].value, type_=compiled.binds[parameter].type)
        for index, parameter in enumerate(positions)
    ]
    listed = ", ".join(f":{argument.key}" for argument in arguments)
    execute = sa.text(f"EXECUTE {name}({listed})" if arguments else f"EXECUTE {name}").bindparams(*arguments)
    return _Prepared(
        name,
        f"PREPARE {name} AS {compiled.string}",
        # Typed columns by name alone: the statement's own would bring its parameters along.
        execute.columns(*(sa.column(column.key, column.type) for column in statement.selected_columns)),
        {parameter: argument.key for parameter, argument in zip(positions, arguments, strict=True)},
    )


def execute_prepared(conn: Connection, statement: sa.Select, parameters: Mapping[str, Any]) -> CursorResult[Any]:
    """Run the SELECT `statement` (built once, its columns labelled) as a statement the PostgreSQL
    session keeps parsed and planned: PREPARE on the connection's first use of it, EXECUTE after.
    Its one plan serves every value (plan_cache_mode, SESSION_OPTIONS): only for a statement whose
    best plan does not depend on them. SQLite runs it as it is."""
    if conn.dialect.name != "postgresql":
        return conn.execute(statement, parameters)
    prepared = _prepared(statement)
    arguments = {prepared.renamed[name]: value for name, value in parameters.items()}
    try:
        return _execute_prepared(conn, prepared, arguments)
    except sa.exc.DBAPIError as error:
        if getattr(error.orig, "pgcode", None) not in _PREPARED_STATEMENT_LOST:
            raise
        # Start the session's prepared statements over: now if no transaction was aborted, else on next use.
        conn.connection.info["prepared"] = None
        if not autocommitting(conn):
            raise
        return _execute_prepared(conn, prepared, arguments)


def _execute_prepared(conn: Connection, prepared: _Prepared, arguments: Mapping[str, Any]) -> CursorResult[Any]:
    # The names this connection's session has prepared (SQLAlchemy forgets them with the connection);
    # None: not known since a statement went astray.
    info = conn.connection.info
    if "prepared" in info and info["prepared"] is None:
        conn.exec_driver_sql("DEALLOCATE ALL")
        info["prepared"] = set()
    on_connection = info.setdefault("prepared", set())
    if prepared.name not in on_connection:
        # As written: psycopg2 would read a % in it as a placeholder.
        conn.exec_driver_sql(prepared.prepare, execution_options={"no_parameters": True})
        on_connection.add(prepared.name)
    return conn.execute(prepared.execute, arguments)

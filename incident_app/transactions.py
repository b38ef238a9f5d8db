"""Transactions and connections as the service uses them: a PostgreSQL connection stays in
autocommit unless a block needs a transaction, so a read or a one-statement write is one round trip."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg2
from sqlalchemy.engine import Connection, Engine


@contextmanager
def transaction(engine: Engine, *, write: bool = False) -> Iterator[Connection]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with ExitStack() as stack:
        conn = stack.enter_context(engine.connect())
        if write:
            conn.execution_options(for_write=True)
        if conn.dialect.name == "postgresql":
            stack.enter_context(_out_of_autocommit(conn))
        stack.enter_context(conn.begin())
        yield conn


@contextmanager
def _out_of_autocommit(conn: Connection) -> Iterator[None]:
    """psycopg2 out of autocommit for the block: BEGIN … COMMIT at the session's level (READ COMMITTED,
    set at connect). A client-side switch; SQLAlchemy's isolation_level option would instead have
    psycopg2 send `SET default_transaction_isolation TO DEFAULT` before every transaction but the
    first on a connection: one round trip more (tests/test_round_trips.py)."""
    dbapi_connection = conn.connection.dbapi_connection
    dbapi_connection.autocommit = False
    try:
        yield
    finally:
        if not dbapi_connection.closed:
            try:
                dbapi_connection.autocommit = True
            except psycopg2.Error:
                conn.invalidate()  # never back to the pool outside autocommit


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that need no transaction: each statement sees the latest commit.

    On PostgreSQL it stays in autocommit, which saves the BEGIN and COMMIT round trips of a
    transaction (a third of a single-row read's database time); SQLite reads stay transactional.
    """
    with engine.connect() as conn:
        yield conn


@contextmanager
def single_statement(engine: Engine) -> Iterator[Connection]:
    """For a block that writes with one statement: on PostgreSQL it commits by itself, one round
    trip in all; SQLite wraps the block in a write transaction as `transaction` does."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            yield conn
    else:
        with transaction(engine, write=True) as conn:
            yield conn


def autocommitting(conn: Connection) -> bool:
    """Whether each statement on `conn` commits by itself (PostgreSQL outside `transaction`)."""
    return conn.dialect.name == "postgresql" and conn.connection.dbapi_connection.autocommit


"""One engine per process, transactions, and the dialect set-up that makes PostgreSQL and SQLite
behave alike for the rest of the code."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import gevent
import psycopg2
import psycopg2.extensions
import sqlalchemy as sa
from psycogreen.gevent import gevent_wait_callback
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult, Engine

from incident_app.settings import Settings
from incident_app.tables import SCHEMA

log = logging.getLogger(__name__)

# Seconds: how long a request waits to connect, for a pooled connection, and for one statement.
CONNECT_TIMEOUT = 3
POOL_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 30_000
# A pooled connection idle longer than this is pinged before use. Pinging every checkout
# (pool_pre_ping) cost a round trip per transaction, ~10% of a read under load; a connection in
# steady use that dies is still detected on use, and the pool then recycles them all.
PING_AFTER_IDLE_SECONDS = 1.0
SQLITE_BUSY_TIMEOUT = 15
# The isolation level of every transaction: set for the session at connect (`transaction` relies
# on it) and for migrations.
TRANSACTION_ISOLATION = "READ COMMITTED"
_ISOLATION_OPTION = TRANSACTION_ISOLATION.lower().replace(" ", "\\ ")  # libpq options: spaces escaped
# plan_cache_mode: the statements the service prepares (execute_prepared) have one best plan
# whatever their values, so PostgreSQL plans them once per session rather than on every EXECUTE.
SESSION_OPTIONS = (
    f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c timezone=UTC -c default_transaction_isolation={_ISOLATION_OPTION}"
    " -c plan_cache_mode=force_generic_plan"
)
# Under gevent no single wait on the database outlives the statement timeout by more than this.
WAIT_MARGIN_SECONDS = 5


def make_psycopg_cooperative() -> None:
    """Have psycopg2 yield to gevent while it waits on the database (call once per worker, before
    any connection). The waits are bounded: a server that stops answering on an open connection
    breaks that connection after the statement timeout and a margin, instead of holding a greenlet."""
    limit = STATEMENT_TIMEOUT_MS / 1000 + WAIT_MARGIN_SECONDS

    def bounded_wait(conn) -> None:
        try:
            gevent_wait_callback(conn, timeout=limit)
        except TimeoutError:
            # psycopg2 closes a connection whose wait failed; the message marks it as a disconnect.
            raise psycopg2.OperationalError(f"could not receive data from server within {limit}s") from None

    psycopg2.extensions.set_wait_callback(bounded_wait)


@contextmanager
def within(seconds: float, error: Exception) -> Iterator[None]:
    """Raise `error` if the block outlives `seconds` while psycopg2 is cooperative (gevent).

    libpq's own timeouts only bound blocking calls: in the non-blocking mode psycogreen uses, a
    connect to a host that never answers would wait forever. Blocking, libpq's timeouts apply.
    """
    if psycopg2.extensions.get_wait_callback() is None:
        yield
        return
    with gevent.Timeout(seconds, error):
        yield


def create_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
        return _sqlite_engine(settings)
    engine = sa.create_engine(
        settings.database_url,
        # A fixed pool: connections above a "minimum" would be opened and closed under load,
        # which is what makes p99 jump. DB_POOL_MIN are opened up front (warm_pool).
        pool_size=settings.db_pool_max,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT,
        pool_recycle=1800,
        # Statements commit by themselves unless `transaction` opens one: a read or a single-statement
        # write then costs one round trip, without BEGIN and COMMIT.
        isolation_level="AUTOCOMMIT",
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": settings.service_name[:63],
            "options": SESSION_OPTIONS,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    )
    _connect_within_deadline(engine)
    _ping_connections_left_idle(engine)
    return engine


def _connect_within_deadline(engine: Engine) -> None:
    @sa.event.listens_for(engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):
        timed_out = psycopg2.OperationalError(f"timeout expired: no connection within {CONNECT_TIMEOUT}s")
        with within(CONNECT_TIMEOUT, timed_out):
            return dialect.connect(*cargs, **cparams)


def _ping_connections_left_idle(engine: Engine) -> None:
    @sa.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:
        checked_in_at = record.info.get("checked_in_at")
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
            return
        try:
            # What pool_pre_ping runs, outside any transaction; a ping that hangs is a dead connection.
            with within(CONNECT_TIMEOUT, psycopg2.OperationalError("ping timed out")):
                engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            # The pool discards this connection and checks out another (a fresh one if need be).
            raise sa.exc.DisconnectionError() from exc


def _sqlite_engine(settings: Settings) -> Engine:
    engine = sa.create_engine(
        settings.database_url,
        pool_size=settings.db_pool_max,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
    )

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        # Take BEGIN out of pysqlite's hands so that write transactions can BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer takes SQLite's write lock at BEGIN, so its reads are as good as FOR UPDATE.
        mode = "IMMEDIATE" if conn.get_execution_options().get("for_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    # SQLite has no schemas: the `incidents` schema of the Table objects maps to the main file.
    return engine.execution_options(schema_translate_map={SCHEMA: None})


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


def warm_pool(engine: Engine, connections: int) -> None:
    """Open DB_POOL_MIN connections now, so the first requests do not pay for them."""
    opened: list[Connection] = []
    try:
        for _ in range(connections):
            opened.append(engine.connect())
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not open the initial database connections: %s", exc.__class__.__name__)
    finally:
        for conn in opened:
            conn.close()


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


def bind(table: sa.Table, columns: Sequence[str], prefix: str) -> dict[str, sa.BindParameter[Any]]:
    """Bind parameters for `columns` of `table`, named `prefix` + column, typed as the columns."""
    return {name: sa.bindparam(prefix + name, type_=table.c[name].type) for name in columns}


def prefixed(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`values` under the names `bind` gives their parameters."""
    return {prefix + name: value for name, value in values.items()}


def unnest_arrays(columns: Mapping[str, Any], prefix: str, name: str | None = None) -> sa.TableValuedAlias:
    """PostgreSQL: rows given as one array per column (`arrays` makes them), `columns` mapping each
    column's name to its type, bound as `prefix` + name: one statement, built once, for any number."""
    def array(type_: Any) -> postgresql.ARRAY[Any]:
        # dimensions=1: a JSON value that is a list is one element, not a further dimension.
        return postgresql.ARRAY(postgresql.JSONB() if isinstance(type_, sa.JSON) else type_, dimensions=1)

    values = sa.func.unnest(*(sa.bindparam(prefix + column, type_=array(type_)) for column, type_ in columns.items()))
    return values.table_valued(*(sa.column(column, type_) for column, type_ in columns.items())).render_derived(name)


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


def _rows(result: sa.CursorResult) -> list[sa.Row]:
    # A `first` without RETURNING (an UPDATE) gives no rows: asking for them would raise.
    return result.all() if result.returns_rows else []


@functools.lru_cache(maxsize=256)
def _together(first: sa.Executable, writes: tuple[sa.UpdateBase, ...]) -> sa.Executable:
    # Keyed by the statements themselves, built once per shape: composed once per combination
    # (bounded all the same, should a statement built per request ever come here).
    return first.add_cte(*(statement.cte(f"together_{index}") for index, statement in enumerate(writes)))


# Server-side prepared statements for the hottest reads: PostgreSQL parses and plans them once per
# connection instead of on every request, which was half of what it spent on a get one (README,
# Performance). The psycopg2 dialect numbering its parameters $1, $2 … writes the text PREPARE takes.
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

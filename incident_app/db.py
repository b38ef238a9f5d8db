"""One engine per process (pool, timeouts, gevent-cooperative psycopg2) and the dialect set-up that
makes PostgreSQL and SQLite behave alike. Transactions: transactions.py; statements: statements.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import psycopg2
import psycopg2.extensions
import sqlalchemy as sa
from psycogreen.gevent import gevent_wait_callback
from sqlalchemy.engine import Connection, Engine

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
# plan_cache_mode: the statements the service prepares (prepared.execute_prepared) have one best plan
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


def create_engine(settings: Settings, *, options: str = "") -> Engine:
    """The engine of `settings`; on PostgreSQL its sessions get `options` after SESSION_OPTIONS."""
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
        # Statements commit by themselves unless `transactions.transaction` opens one: a read or a single-statement
        # write then costs one round trip, without BEGIN and COMMIT.
        isolation_level="AUTOCOMMIT",
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": settings.service_name[:63],
            "options": SESSION_OPTIONS + options,
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

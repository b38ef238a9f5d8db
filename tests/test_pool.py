"""The connection pool: a connection that died while idle in the pool is replaced before use,
without pinging connections in steady use."""

from __future__ import annotations

import sqlalchemy as sa

from incident_app import db
from incident_app.settings import Settings
from incident_app.transactions import transaction


def _backend_pid(engine: sa.Engine) -> int:
    with transaction(engine) as conn:
        return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()


def _terminate(url: str, pid: int) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # The second argument waits (ms) until the backend is really gone.
        assert conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s, 5000)", {"pid": pid}).scalar_one()
    admin.dispose()


def test_connection_killed_while_idle_is_replaced_before_use(postgres_url, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every pooled connection counts as idle
    engine = db.create_engine(Settings(database_url=postgres_url, db_pool_max=1))
    first = _backend_pid(engine)
    _terminate(postgres_url, first)

    assert _backend_pid(engine) != first  # no error: the dead connection was swapped for a new one
    engine.dispose()


def test_connection_in_steady_use_is_not_pinged(postgres_url):
    engine = db.create_engine(Settings(database_url=postgres_url, db_pool_max=1))
    statements: list[str] = []
    _backend_pid(engine)  # the pool now holds one connection, checked in a moment ago
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    pings = []
    original_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda dbapi_connection: pings.append(1) or original_ping(dbapi_connection)
    try:
        _backend_pid(engine)
    finally:
        engine.dialect.do_ping = original_ping
    assert pings == []
    assert statements == ["SELECT pg_backend_pid()"]
    engine.dispose()

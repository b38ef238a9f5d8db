"""A short, bounded path to the database for the probes and the scrape-time gauges.

The request engine waits seconds for a pooled connection and a statement; a probe must answer
within about two seconds whatever the database does. So probes open their own connection each
time (no pool to queue behind), with a short connect timeout, a short statement timeout and,
under gevent, a hard client-side deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from incident_app import migrate
from incident_app.db import within
from incident_app.repository import probes as queries
from incident_app.settings import Settings
from incident_app.tables import SCHEMA

DEADLINE_SECONDS = 1.5
# libpq's smallest connect timeout; it only bounds blocking connects (db.within bounds them under gevent).
CONNECT_TIMEOUT_SECONDS = 2
STATEMENT_TIMEOUT_MS = 1000
SQLITE_BUSY_TIMEOUT_SECONDS = 1


class ProbeTimeout(Exception):
    """The database did not answer a probe within its deadline."""


def create_probe_engine(settings: Settings) -> Engine:
    if settings.is_sqlite:
        engine = sa.create_engine(
            settings.database_url,
            poolclass=NullPool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        return engine.execution_options(schema_translate_map={SCHEMA: None})
    return sa.create_engine(
        settings.database_url,
        poolclass=NullPool,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "application_name": f"{settings.service_name[:55]}-probe",
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c timezone=UTC",
        },
    )


class ProbeDatabase:
    """The three questions the probes and the gauge ask, each on a fresh, bounded connection."""

    def __init__(self, engine: Engine, *, deadline: float = DEADLINE_SECONDS) -> None:
        self.engine = engine
        self.deadline = deadline

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        # Under gevent libpq's connect_timeout does not apply: db.within interrupts the wait instead.
        timed_out = ProbeTimeout(f"no answer from the database within {self.deadline}s")
        with within(self.deadline, timed_out), self.engine.connect() as conn:
            yield conn

    def ping(self) -> float:
        """Milliseconds a `SELECT 1` took, connection included."""
        started = time.perf_counter()
        with self.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return round((time.perf_counter() - started) * 1000, 2)

    def schema_is_current(self) -> bool:
        with self.connect() as conn:
            return migrate.is_current(conn)

    def unresolved_by_severity(self) -> dict[str, int]:
        with self.connect() as conn:
            return queries.count_unresolved_by_severity(conn)

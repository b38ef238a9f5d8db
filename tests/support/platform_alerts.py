"""The Alert Ingestion Service's `alerts.alerts` table, which the service reads linked alerts' fields
from when it shares the PostgreSQL database (incident_app/repository/platform_alerts.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import sqlalchemy as sa

from incident_app.repository.platform_alerts import forget_table


def create_platform_table(conn: sa.Connection) -> None:
    """The Alert Ingestion Service's table, as the platform defines it."""
    conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS alerts")
    conn.exec_driver_sql(
        "CREATE TABLE alerts.alerts (id UUID PRIMARY KEY, service TEXT, severity TEXT, message TEXT,"
        " timestamp TIMESTAMPTZ)"
    )


@contextmanager
def platform_table(database_url: str) -> Iterator[sa.Connection]:
    """The table in the database at `database_url` for the block, and a connection to fill it."""
    engine = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        create_platform_table(conn)
        forget_table()
        try:
            yield conn
        finally:
            conn.exec_driver_sql("DROP SCHEMA alerts CASCADE")
            forget_table()
    engine.dispose()


def add_platform_alert(conn: sa.Connection, alert_id: uuid.UUID, message: str | None, timestamp: datetime | None) -> None:
    conn.execute(
        sa.text("INSERT INTO alerts.alerts VALUES (:id, 'checkout', 'warning', :message, :timestamp)"),
        {"id": alert_id, "message": message, "timestamp": timestamp},
    )

"""Alembic environment: one transaction for the whole upgrade, serialised across replicas on
PostgreSQL by an advisory lock, so that replicas starting together upgrade exactly once."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from incident_app.db import TRANSACTION_ISOLATION, create_engine
from incident_app.migrate import VERSION_TABLE_SCHEMA
from incident_app.settings import Settings
from incident_app.tables import SCHEMA, metadata

# Any constant shared by every replica; "incident" as digits on a phone keypad.
MIGRATION_LOCK_KEY = 46_233_368


def _include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    # The database may hold other services' schemas (alerts, users…): compare only ours.
    if type_ == "schema":
        return name in (SCHEMA, None)
    return True


def run_migrations() -> None:
    settings: Settings = context.config.attributes.get("settings") or Settings.from_env()
    engine = create_engine(settings)
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as connection:
            if postgres:
                # The request engine autocommits; the upgrade must be one transaction, which its lock lasts.
                connection.execution_options(isolation_level=TRANSACTION_ISOLATION)
            context.configure(
                connection=connection,
                target_metadata=metadata,
                version_table_schema=VERSION_TABLE_SCHEMA if postgres else None,
                include_schemas=postgres,
                include_name=_include_name,
                transactional_ddl=True,
                compare_type=True,
            )
            with context.begin_transaction():
                if postgres:
                    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
run_migrations()

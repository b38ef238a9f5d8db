"""Schema migrations: Alembic, driven from code so that start-up, the CLI and tests share one path."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from incident_app.settings import Settings
from incident_app.tables import SCHEMA

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# The platform's services may share one database: keep our revision table in our own schema.
VERSION_TABLE_SCHEMA = SCHEMA


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to `revision`. Safe when several replicas run it at once (see env.py)."""
    command.upgrade(alembic_config(settings), revision)


def check_revision(revision: str) -> None:
    """Raise alembic's CommandError for a revision no file names, before anything connects.

    Relative revisions (`+1`, `-1`) can only be resolved against the database; alembic checks them.
    """
    if not revision.startswith(("+", "-")):
        ScriptDirectory(str(MIGRATIONS_DIR)).get_revisions(revision)


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None before the first migration."""
    schema = VERSION_TABLE_SCHEMA if conn.dialect.name == "postgresql" else None
    if not sa.inspect(conn).has_table("alembic_version", schema=schema):
        return None
    version = sa.table("alembic_version", sa.column("version_num"), schema=schema)
    return conn.execute(sa.select(version.c.version_num)).scalar()


def is_current(conn: Connection) -> bool:
    return current_revision(conn) == head_revision()

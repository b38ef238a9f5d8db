"""Incident counts per (service, severity, status), kept exact by the database's own triggers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
SEVERITIES = ("critical", "high", "medium", "low")
STATUSES = ("open", "acknowledged", "resolved")

FUNCTION = f"{SCHEMA}.apply_incident_count_deltas"
TRIGGERS = {
    "INSERT": "incident_counts_after_insert",
    "UPDATE": "incident_counts_after_update",
    "DELETE": "incident_counts_after_delete",
    "TRUNCATE": "incident_counts_after_truncate",
}


def _enum(values: tuple[str, ...], name: str) -> sa.types.TypeEngine:
    # PostgreSQL reuses the types 0001 created; SQLite stores the strings, as 0001 does.
    existing = postgresql.ENUM(*values, name=name, schema=SCHEMA, create_type=False)
    return sa.Enum(*values, name=name, schema=SCHEMA).with_variant(existing, "postgresql")


# Each key's count is spread over SHARDS rows, by a byte of the incident's random id: concurrent
# creates of one service and severity (an incident storm) then wait on one row in SHARDS, not all
# on the same one, while a list's total still sums a handful of rows.
SHARDS = 8
_SHARD = f"get_byte(uuid_send(id), 15) % {SHARDS}"


def _upsert_deltas(source: str) -> str:
    """PostgreSQL: add the summed deltas of `source` (rows of service, severity, status, shard, delta)."""
    return f"""
        INSERT INTO {SCHEMA}.incident_counts (service, severity, status, shard, count)
        SELECT service, severity, status, shard, sum(delta) FROM ({source}) AS deltas
        GROUP BY 1, 2, 3, 4
        HAVING sum(delta) <> 0
        -- Each statement locks counter rows in one order, so concurrent transitions cannot deadlock.
        ORDER BY 1, 2, 3, 4
        ON CONFLICT (service, severity, status, shard)
        DO UPDATE SET count = incident_counts.count + EXCLUDED.count;"""


_NEW_ROWS = f"SELECT service, severity, status, {_SHARD} AS shard, 1 AS delta FROM new_rows"
_OLD_ROWS = f"SELECT service, severity, status, {_SHARD} AS shard, -1 AS delta FROM old_rows"

# One function for every event: each branch only reads the transition tables its trigger declares.
_FUNCTION_SQL = f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_upsert_deltas(_NEW_ROWS)}
    ELSIF TG_OP = 'UPDATE' THEN
        {_upsert_deltas(f"{_NEW_ROWS} UNION ALL {_OLD_ROWS}")}
    ELSIF TG_OP = 'DELETE' THEN
        {_upsert_deltas(_OLD_ROWS)}
    ELSE  -- TRUNCATE: no rows left to count
        DELETE FROM {SCHEMA}.incident_counts;
    END IF;
    RETURN NULL;
END
$$
"""

# Statement-level, so a bulk load of a million rows costs one grouped upsert, not a million.
# With transition tables each event needs its own trigger, and UPDATE cannot name columns.
_POSTGRESQL_TRIGGERS = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
    "TRUNCATE": "",  # TRUNCATE has no transition tables and skips the DELETE trigger
}


def _sqlite_upsert(row: str, delta: int) -> str:
    return (
        "INSERT INTO incident_counts (service, severity, status, shard, count)"
        f" VALUES ({row}.service, {row}.severity, {row}.status, 0, {delta})"
        " ON CONFLICT (service, severity, status, shard) DO UPDATE SET count = count + excluded.count;"
    )


# SQLite has only row-level triggers; its single writer makes their order moot, and shards too.
_SQLITE_TRIGGERS = {
    "INSERT": f"AFTER INSERT ON incidents BEGIN {_sqlite_upsert('NEW', 1)} END",
    "UPDATE": (
        "AFTER UPDATE OF service, severity, status ON incidents"
        " WHEN OLD.service IS NOT NEW.service OR OLD.severity IS NOT NEW.severity OR OLD.status IS NOT NEW.status"
        f" BEGIN {_sqlite_upsert('OLD', -1)} {_sqlite_upsert('NEW', 1)} END"
    ),
    "DELETE": f"AFTER DELETE ON incidents BEGIN {_sqlite_upsert('OLD', -1)} END",
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        # Writers wait from here to commit, so the backfill and the triggers see the same rows.
        op.execute(f"LOCK TABLE {SCHEMA}.incidents IN SHARE ROW EXCLUSIVE MODE")

    op.create_table(
        "incident_counts",
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("severity", _enum(SEVERITIES, "severity_level"), nullable=False),
        sa.Column("status", _enum(STATUSES, "incident_status"), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("service", "severity", "status", "shard", name="pk_incident_counts"),
        schema=SCHEMA,
    )

    if postgres:
        op.execute(_FUNCTION_SQL)
        for event, referencing in _POSTGRESQL_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {TRIGGERS[event]} AFTER {event} ON {SCHEMA}.incidents {referencing}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
            )
        prefix = f"{SCHEMA}."
    else:
        for event, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {TRIGGERS[event]} {body}")
        prefix = ""

    shard = _SHARD if postgres else "0"
    op.execute(
        f"INSERT INTO {prefix}incident_counts (service, severity, status, shard, count)"
        f" SELECT service, severity, status, {shard}, count(*) FROM {prefix}incidents GROUP BY 1, 2, 3, 4"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger in TRIGGERS.values():
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {SCHEMA}.incidents")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    else:
        for event in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {TRIGGERS[event]}")
    op.drop_table("incident_counts", schema=SCHEMA)

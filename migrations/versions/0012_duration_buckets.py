"""Windowed percentiles without sorting the window (PostgreSQL): each duration falls in one of a
fixed set of buckets, 16 per doubling from a millisecond (each about 4.4% wide); per UTC day of
`created_at` the database keeps how many durations of each kind are in each bucket, exact by its
own triggers as 0011 keeps the day rows; and an index per duration orders the incidents by bucket,
then `created_at`.

A window's percentile is then found without sorting its ~245,000 durations (a 30-day window at a
million rows): the bucket counts of its whole days, and of its partial first and last days read
from the incidents, say which bucket holds each rank and at which rank inside it; only that bucket's
durations in the window are read (a range of the bucket index) and sorted (repository/analytics.py).

SQLite ranks from the durations' own indexes (0008) for every filter, so none of this is made there.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
TABLE = "incident_duration_buckets"
DURATIONS = {"mtta": "acknowledged_at", "mttr": "resolved_at"}  # the later timestamp of each
COUNTS = tuple(f"{name}_count" for name in DURATIONS)
KEY = ("day", "bucket", "shard")

# Bucket i (1 ≤ i < len) holds the durations d with THRESHOLDS[i-1] ≤ d < THRESHOLDS[i] seconds,
# bucket 0 those below a millisecond (and negative ones), the last those of 35 years and more:
# width_bucket's numbering. Fixed forever: the day rows and the indexes are built from them.
STEPS_PER_DOUBLING = 16
THRESHOLDS = tuple(0.001 * 2 ** (step / STEPS_PER_DOUBLING) for step in range(40 * STEPS_PER_DOUBLING + 1))
BUCKET_FUNCTION = f"{SCHEMA}.duration_bucket"
FUNCTION = f"{SCHEMA}.apply_duration_bucket_deltas"
TRIGGERS = {
    "INSERT": ("incident_duration_buckets_after_insert", "REFERENCING NEW TABLE AS new_rows"),
    "UPDATE": ("incident_duration_buckets_after_update", "REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows"),
    "DELETE": ("incident_duration_buckets_after_delete", "REFERENCING OLD TABLE AS old_rows"),
    "TRUNCATE": ("incident_duration_buckets_after_truncate", ""),
}
# A key's rows are spread by the backend that writes them (its pid; 0 once folded): an acknowledge
# falls in its day's bucket of about a minute with every other one of the moment, so shards by the
# incident's id, as 0003's and 0011's, would have concurrent acknowledges queue on the same rows
# until they commit. One backend runs one transaction at a time: no writer ever waits for another.
SHARD = "pg_backend_pid()"


def _seconds(later: str) -> str:
    """incident_app.tables.seconds_between as PostgreSQL renders it (0008's window index uses it)."""
    return f"date_part('epoch', {later} - created_at)"


# The values are Python's shortest round-tripping reprs, so PostgreSQL reads the same doubles back.
_BUCKET_FUNCTION_SQL = f"""
CREATE FUNCTION {BUCKET_FUNCTION}(seconds double precision) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN width_bucket(seconds, '{{{",".join(repr(t) for t in THRESHOLDS)}}}'::double precision[])
"""


def _deltas(table: str, sign: int, shard: str = SHARD) -> str:
    parts = []
    for name, later in DURATIONS.items():
        counts = ", ".join(f"{sign if count == f'{name}_count' else 0} AS {count}" for count in COUNTS)
        parts.append(
            f"SELECT (created_at AT TIME ZONE 'UTC')::date AS day, {BUCKET_FUNCTION}({_seconds(later)}) AS bucket,"
            f" {shard} AS shard, {counts} FROM {table} WHERE {later} IS NOT NULL"
        )
    return " UNION ALL ".join(parts)


def _upsert_deltas(source: str) -> str:
    key, sums = ", ".join(KEY), ", ".join(f"sum({count})" for count in COUNTS)
    return f"""
        INSERT INTO {SCHEMA}.{TABLE} ({key}, {", ".join(COUNTS)})
        SELECT {key}, {sums} FROM ({source}) AS deltas
        GROUP BY {key}
        -- A change that moves no duration (a note, an assignment, a create) adds nothing.
        HAVING ({sums}) <> ({", ".join("0" for _ in COUNTS)})
        ON CONFLICT ({key}) DO UPDATE SET
            {", ".join(f"{count} = {TABLE}.{count} + EXCLUDED.{count}" for count in COUNTS)};"""


def _none_timed(table: str) -> str:
    """No row of `table` has a duration: most statements (a create, an assignment) add nothing here,
    and checking costs less than planning and running the upsert for nothing."""
    timed = " OR ".join(f"{later} IS NOT NULL" for later in DURATIONS.values())
    return f"NOT EXISTS (SELECT FROM {table} WHERE {timed})"


_FUNCTION_SQL = f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF {_none_timed("new_rows")} THEN RETURN NULL; END IF;
        {_upsert_deltas(_deltas("new_rows", 1))}
    ELSIF TG_OP = 'UPDATE' THEN
        IF {_none_timed("new_rows")} AND {_none_timed("old_rows")} THEN RETURN NULL; END IF;
        {_upsert_deltas(f"{_deltas('new_rows', 1)} UNION ALL {_deltas('old_rows', -1)}")}
    ELSIF TG_OP = 'DELETE' THEN
        IF {_none_timed("old_rows")} THEN RETURN NULL; END IF;
        {_upsert_deltas(_deltas("old_rows", -1))}
    ELSE  -- TRUNCATE
        DELETE FROM {SCHEMA}.{TABLE};
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Writers wait from here to commit, so the backfill and the triggers see the same rows.
    op.execute(f"LOCK TABLE {SCHEMA}.incidents IN SHARE ROW EXCLUSIVE MODE")
    op.execute(_BUCKET_FUNCTION_SQL)
    op.create_table(
        TABLE,
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        *(sa.Column(count, sa.BigInteger(), nullable=False) for count in COUNTS),
        sa.PrimaryKeyConstraint(*KEY, name=f"pk_{TABLE}"),
        schema=SCHEMA,
    )
    op.execute(_FUNCTION_SQL)
    for event, (trigger, referencing) in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {trigger} AFTER {event} ON {SCHEMA}.incidents {referencing}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
        )
    op.execute(_upsert_deltas(_deltas(f"{SCHEMA}.incidents", 1, shard="0")))  # as folded
    for name, later in DURATIONS.items():
        op.create_index(
            f"ix_incidents_{name}_bucket", "incidents",
            [sa.text(f"{BUCKET_FUNCTION}({_seconds(later)})"), "created_at"], schema=SCHEMA,
            postgresql_include=[later], postgresql_where=sa.text(f"{later} IS NOT NULL"),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in reversed(DURATIONS):
        op.drop_index(f"ix_incidents_{name}_bucket", "incidents", schema=SCHEMA)
    for trigger, _ in TRIGGERS.values():
        op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {SCHEMA}.incidents")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    op.drop_table(TABLE, schema=SCHEMA)
    op.execute(f"DROP FUNCTION IF EXISTS {BUCKET_FUNCTION}(double precision)")

"""Analytics counts and sums per day, kept exact by the database's own triggers, as 0003 keeps the
list totals: per UTC day of `created_at`, service and severity, how many incidents are in each
status, and how many have each duration with its sum in microseconds (integers, so that what a
change adds and later takes away cancels exactly). The statuses are columns, not part of the key,
so that an acknowledge or a resolve changes one row, not two.

A time window's counts and averages then add up a row per key and day for the days it holds whole,
and read only its partial first and last days from the incidents (repository/analytics.py):
at a million rows the 30-day window's grouped pass over ~245,000 incidents becomes ~7,000 day rows
and two short ranges of the window index.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SCHEMA = "incidents"
SEVERITIES = ("critical", "high", "medium", "low")
STATUSES = ("open", "acknowledged", "resolved")
DURATIONS = {"mtta": "acknowledged_at", "mttr": "resolved_at"}  # the later timestamp of each
SUMS = (*(f"{status}_count" for status in STATUSES), "mtta_us", "mtta_count", "mttr_us", "mttr_count")
KEY = ("day", "service", "severity", "shard")

FUNCTION = f"{SCHEMA}.apply_incident_day_deltas"
TRIGGERS = {
    "INSERT": "incident_days_after_insert",
    "UPDATE": "incident_days_after_update",
    "DELETE": "incident_days_after_delete",
    "TRUNCATE": "incident_days_after_truncate",
}
# As 0003: a key's row of the day is spread over SHARDS rows by a byte of the incident's random id.
SHARDS = 8


def _enum(values: tuple[str, ...], name: str) -> sa.types.TypeEngine:
    existing = postgresql.ENUM(*values, name=name, schema=SCHEMA, create_type=False)
    return sa.Enum(*values, name=name, schema=SCHEMA).with_variant(existing, "postgresql")


def _microseconds(later: str, earlier: str, postgres: bool) -> str:
    """later − earlier in whole microseconds (the timestamps' precision), NULL when `later` is."""
    if postgres:
        return f"round(date_part('epoch', {later} - {earlier}) * 1000000)::bigint"
    # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' text: whole seconds and the fraction apart (as 0008).
    def whole(value: str) -> str:
        return f"CAST(strftime('%s', substr({value}, 1, 19)) AS INTEGER)"

    def fraction(value: str) -> str:
        return f"CAST(substr({value}, 20) AS REAL)"

    seconds = f"(({whole(later)} - {whole(earlier)}) + ({fraction(later)} - {fraction(earlier)}))"
    return f"CAST(round({seconds} * 1000000) AS INTEGER)"


def _contributions(row: str, sign: int, postgres: bool) -> list[str]:
    """What one incident (`row`.column) adds to its day's row: the SUMS, times `sign`."""
    def one_if(condition: str) -> str:
        return f"{sign} * ({condition})::int" if postgres else f"{sign} * ({condition})"

    sums = [one_if(f"{row}status = '{status}'") for status in STATUSES]
    for later in DURATIONS.values():
        sums.append(f"{sign} * coalesce({_microseconds(f'{row}{later}', f'{row}created_at', postgres)}, 0)")
        sums.append(one_if(f"{row}{later} IS NOT NULL"))
    return sums


def _named(values: list[str]) -> str:
    return ", ".join(f"{value} AS {name}" for value, name in zip(values, SUMS, strict=True))


def _day(row: str, postgres: bool) -> str:
    return f"({row}created_at AT TIME ZONE 'UTC')::date" if postgres else f"substr({row}created_at, 1, 10)"


_SHARD = f"get_byte(uuid_send(id), 15) % {SHARDS}"


def _deltas(table: str, sign: int) -> str:
    return (f"SELECT {_day('', True)} AS day, service, severity, {_SHARD} AS shard,"
            f" {_named(_contributions('', sign, True))} FROM {table}")


def _upsert_deltas(source: str) -> str:
    """PostgreSQL: add the summed deltas of `source` to the day rows (as 0003 does for counts)."""
    key = ", ".join(KEY)
    return f"""
        INSERT INTO {SCHEMA}.incident_days ({key}, {", ".join(SUMS)})
        SELECT {key}, {", ".join(f"sum({name})" for name in SUMS)} FROM ({source}) AS deltas
        GROUP BY {key}
        -- A change that moves nothing (a note, an assignment) adds and takes away the same integers.
        HAVING ({", ".join(f"sum({name})" for name in SUMS)}) <> ({", ".join("0" for _ in SUMS)})
        -- Each statement locks day rows in one order, so concurrent transitions cannot deadlock.
        ORDER BY {key}
        ON CONFLICT ({key}) DO UPDATE SET
            {", ".join(f"{name} = incident_days.{name} + EXCLUDED.{name}" for name in SUMS)};"""


_FUNCTION_SQL = f"""
CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {_upsert_deltas(_deltas("new_rows", 1))}
    ELSIF TG_OP = 'UPDATE' THEN
        {_upsert_deltas(f"{_deltas('new_rows', 1)} UNION ALL {_deltas('old_rows', -1)}")}
    ELSIF TG_OP = 'DELETE' THEN
        {_upsert_deltas(_deltas("old_rows", -1))}
    ELSE  -- TRUNCATE
        DELETE FROM {SCHEMA}.incident_days;
    END IF;
    RETURN NULL;
END
$$
"""

_POSTGRESQL_TRIGGERS = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
    "TRUNCATE": "",
}


def _sqlite_upsert(row: str, sign: int) -> str:
    prefix = f"{row}."
    values = [_day(prefix, False), f"{prefix}service", f"{prefix}severity", "0",
              *_contributions(prefix, sign, False)]
    return (
        f"INSERT INTO incident_days ({', '.join(KEY)}, {', '.join(SUMS)}) VALUES ({', '.join(values)})"
        f" ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
        + ", ".join(f"{name} = {name} + excluded.{name}" for name in SUMS) + ";"
    )


_WATCHED = ("created_at", "service", "severity", "status", *DURATIONS.values())
_SQLITE_TRIGGERS = {
    "INSERT": f"AFTER INSERT ON incidents BEGIN {_sqlite_upsert('NEW', 1)} END",
    "UPDATE": (
        f"AFTER UPDATE OF {', '.join(_WATCHED)} ON incidents"
        f" WHEN {' OR '.join(f'OLD.{column} IS NOT NEW.{column}' for column in _WATCHED)}"
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
        "incident_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("service", sa.String(255), nullable=False),
        sa.Column("severity", _enum(SEVERITIES, "severity_level"), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in SUMS),
        sa.PrimaryKeyConstraint(*KEY, name="pk_incident_days"),
        schema=SCHEMA,
    )

    if postgres:
        op.execute(_FUNCTION_SQL)
        for event, referencing in _POSTGRESQL_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {TRIGGERS[event]} AFTER {event} ON {SCHEMA}.incidents {referencing}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
            )
        op.execute(_upsert_deltas(_deltas(f"{SCHEMA}.incidents", 1)))
    else:
        for event, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {TRIGGERS[event]} {body}")
        op.execute(
            f"INSERT INTO incident_days ({', '.join(KEY)}, {', '.join(SUMS)})"
            f" SELECT day, service, severity, 0, {', '.join(f'sum({name})' for name in SUMS)}"
            f" FROM (SELECT {_day('', False)} AS day, service, severity, {_named(_contributions('', 1, False))}"
            " FROM incidents) GROUP BY 1, 2, 3"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger in TRIGGERS.values():
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {SCHEMA}.incidents")
        op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
    else:
        for event in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {TRIGGERS[event]}")
    op.drop_table("incident_days", schema=SCHEMA)

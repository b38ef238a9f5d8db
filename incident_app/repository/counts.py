"""Upkeep of incident_counts, incident_days and incident_duration_buckets, the triggers' exact totals
(migrations 0003, 0011, 0012)."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incident_app.tables import SCHEMA
from incident_app.transactions import transaction

log = logging.getLogger(__name__)

# The fold waits this long at most for a row a writer holds, then gives up until its next turn.
FOLD_LOCK_TIMEOUT_MS = 100


def _fold(table: str, key: tuple[str, ...], sums: tuple[str, ...]) -> sa.TextClause:
    """Move every shard of `table` into its key's shard 0, and drop the keys no incident has any
    more (all resolved, say): absent counts 0. `sums` are what a key adds up."""
    key_list, sum_list = ", ".join(key), ", ".join(sums)
    added = ", ".join(f"{name} = {table}.{name} + EXCLUDED.{name}" for name in sums)
    return sa.text(f"""
    WITH moved AS (
        DELETE FROM {SCHEMA}.{table} WHERE shard <> 0
        RETURNING {key_list}, {sum_list}
    )
    INSERT INTO {SCHEMA}.{table} ({key_list}, shard, {sum_list})
    SELECT {key_list}, 0, {", ".join(f"sum({name})" for name in sums)} FROM moved
    GROUP BY {key_list}
    HAVING ({", ".join(f"sum({name})" for name in sums)}) <> ({", ".join("0" for _ in sums)})
    ORDER BY {key_list}
    ON CONFLICT ({key_list}, shard) DO UPDATE SET {added}
""")


# The tables the triggers keep in shards: incident_counts (0003), incident_days (0011) and
# incident_duration_buckets (0012).
_FOLDS = [
    _fold("incident_counts", ("service", "severity", "status"), ("count",)),
    _fold("incident_days", ("day", "service", "severity"),
          ("open_count", "acknowledged_count", "resolved_count", "mtta_us", "mtta_count", "mttr_us", "mttr_count")),
    _fold("incident_duration_buckets", ("day", "bucket"), ("mtta_count", "mttr_count")),
]
# A key's count is zero only when no incident has it, and then its sums are zero as well.
_DROP_ZEROS = [
    sa.text(f"DELETE FROM {SCHEMA}.incident_counts WHERE count = 0"),
    sa.text(f"DELETE FROM {SCHEMA}.incident_days WHERE open_count + acknowledged_count + resolved_count = 0"),
    sa.text(f"DELETE FROM {SCHEMA}.incident_duration_buckets WHERE mtta_count = 0 AND mttr_count = 0"),
]


def fold_shards(engine: Engine) -> bool:
    """Fold every key's shards back into its shard 0, in each table the triggers keep; False when a
    writer held a row too long.

    Writers spread a key over up to 8 rows (the duration buckets: a row per writing backend) so
    that concurrent ones rarely wait on each other; once they are done, a list's total would still
    sum all of them. Folded, it sums one row per (service, severity, status) that has incidents: up
    to 8 times fewer. Writers make the shards they need again.

    This side always yields: past FOLD_LOCK_TIMEOUT_MS of waiting it gives up (and rolls back), so a
    writer waits on it briefly at most and can never end in a deadlock with it. SQLite has one shard.
    """
    if engine.dialect.name != "postgresql":
        return True
    try:
        with transaction(engine, write=True) as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {FOLD_LOCK_TIMEOUT_MS}")
            for statement in (*_FOLDS, *_DROP_ZEROS):
                conn.execute(statement)
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
            raise
        log.info("incident count shards busy; folded next time")
        return False
    return True

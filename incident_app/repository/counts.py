"""Upkeep of incident_counts, the triggers' exact totals (migration 0003)."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from incident_app.tables import SCHEMA
from incident_app.transactions import transaction

log = logging.getLogger(__name__)

# The fold waits this long at most for a row a writer holds, then gives up until its next turn.
FOLD_LOCK_TIMEOUT_MS = 100

_FOLD = sa.text(f"""
    WITH moved AS (
        DELETE FROM {SCHEMA}.incident_counts WHERE shard <> 0
        RETURNING service, severity, status, count
    )
    INSERT INTO {SCHEMA}.incident_counts (service, severity, status, shard, count)
    SELECT service, severity, status, 0, sum(count) FROM moved
    GROUP BY 1, 2, 3
    HAVING sum(count) <> 0
    ORDER BY 1, 2, 3
    ON CONFLICT (service, severity, status, shard) DO UPDATE SET count = incident_counts.count + EXCLUDED.count
""")
# A key no incident has any more (all resolved, say) needs no row: absent counts 0.
_DROP_ZEROS = sa.text(f"DELETE FROM {SCHEMA}.incident_counts WHERE count = 0")


def fold_shards(engine: Engine) -> bool:
    """Fold every key's shards back into its shard 0; False when a writer held a row too long.

    Writers spread a key over up to 8 rows so that concurrent ones rarely wait on each other; once
    they are done, a list's total would still sum all of them. Folded, it sums one row per
    (service, severity, status) that has incidents: up to 8 times fewer. Writers make the shards
    they need again.

    This side always yields: past FOLD_LOCK_TIMEOUT_MS of waiting it gives up (and rolls back), so a
    writer waits on it briefly at most and can never end in a deadlock with it. SQLite has one shard.
    """
    if engine.dialect.name != "postgresql":
        return True
    try:
        with transaction(engine, write=True) as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {FOLD_LOCK_TIMEOUT_MS}")
            conn.execute(_FOLD)
            conn.execute(_DROP_ZEROS)
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
            raise
        log.info("incident count shards busy; folded next time")
        return False
    return True

"""The queries behind the probes and the scrape-time `open_incidents` gauge."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.lifecycle import SEVERITIES, UNRESOLVED
from incident_app.tables import incident_counts


def count_unresolved_by_severity(conn: Connection) -> dict[str, int]:
    """Unresolved incidents per severity, every severity present (0 when none).

    Summed from the triggers' incident_counts, so a scrape reads a few rows whatever the table holds.
    """
    rows = conn.execute(
        sa.select(incident_counts.c.severity, sa.func.sum(incident_counts.c.count))
        .where(incident_counts.c.status.in_(UNRESOLVED))
        .group_by(incident_counts.c.severity)
    )
    counts = dict.fromkeys(SEVERITIES, 0)
    # int(): PostgreSQL's sum of a bigint is a numeric, which psycopg2 returns as a Decimal.
    counts.update({severity: int(count) for severity, count in rows})
    return counts

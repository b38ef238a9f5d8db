"""The queries behind the probes and the scrape-time `open_incidents` gauge."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.lifecycle import SEVERITIES, UNRESOLVED
from incident_app.tables import incidents


def count_unresolved_by_severity(conn: Connection) -> dict[str, int]:
    """Unresolved incidents per severity, every severity present (0 when none): one grouped COUNT."""
    rows = conn.execute(
        sa.select(incidents.c.severity, sa.func.count())
        .where(incidents.c.status.in_(UNRESOLVED))
        .group_by(incidents.c.severity)
    )
    counts = dict.fromkeys(SEVERITIES, 0)
    counts.update({severity: count for severity, count in rows})
    return counts

"""Aggregates over incidents, computed by the database in three queries on either dialect."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from incident_app.lifecycle import SEVERITIES, STATUSES, UNRESOLVED
from incident_app.tables import incidents

PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))


@dataclass(frozen=True)
class AnalyticsFilters:
    service: str | None = None
    severity: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        c = incidents.c
        clauses = []
        if self.service is not None:
            clauses.append(c.service == self.service)
        if self.severity is not None:
            clauses.append(c.severity == self.severity)
        if self.since is not None:
            clauses.append(c.created_at >= self.since)
        if self.until is not None:
            clauses.append(c.created_at < self.until)
        return clauses


def _seconds_between(conn: Connection, later: Any, earlier: Any) -> sa.ColumnElement[float]:
    if conn.dialect.name == "postgresql":
        return sa.extract("epoch", later - earlier)
    # SQLite keeps datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text. julianday() would lose the
    # microseconds to float rounding, so whole seconds and the fraction are taken apart; the whole
    # part is cut off first, since SQLite rounds .999999 up to the next second.
    def whole(value: Any) -> sa.ColumnElement[int]:
        return sa.cast(sa.func.strftime("%s", sa.func.substr(value, 1, 19)), sa.Integer)

    def fraction(value: Any) -> sa.ColumnElement[float]:
        return sa.cast(sa.func.substr(value, 20), sa.Float)

    return (whole(later) - whole(earlier)) + (fraction(later) - fraction(earlier))


def incident_analytics(conn: Connection, filters: AnalyticsFilters) -> dict[str, Any]:
    c = incidents.c
    where = filters.clauses()
    mtta = _seconds_between(conn, c.acknowledged_at, c.created_at)
    mttr = _seconds_between(conn, c.resolved_at, c.created_at)

    # One pass grouped by severity and status gives every count and every average.
    groups = conn.execute(
        sa.select(
            c.severity,
            c.status,
            sa.func.count().label("n"),
            sa.func.sum(mtta).label("mtta_sum"),
            sa.func.count(c.acknowledged_at).label("mtta_n"),
            sa.func.sum(mttr).label("mttr_sum"),
            sa.func.count(c.resolved_at).label("mttr_n"),
        )
        .where(*where)
        .group_by(c.severity, c.status)
    ).all()
    by_service = dict(
        conn.execute(sa.select(c.service, sa.func.count()).where(*where).group_by(c.service).order_by(c.service)).all()
    )

    mtta_percentiles, mttr_percentiles = _percentiles(conn, (mtta, mttr), where)

    by_severity = dict.fromkeys(SEVERITIES, 0)
    by_status = dict.fromkeys(STATUSES, 0)
    sums = {s: {"unresolved": 0, "mtta_sum": 0.0, "mtta_n": 0, "mttr_sum": 0.0, "mttr_n": 0} for s in SEVERITIES}
    for row in groups:
        by_severity[row.severity] += row.n
        by_status[row.status] += row.n
        acc = sums[row.severity]
        acc["unresolved"] += row.n if row.status in UNRESOLVED else 0
        for key in ("mtta_n", "mttr_n"):
            acc[key] += getattr(row, key)
        for key in ("mtta_sum", "mttr_sum"):
            # PostgreSQL's epoch arithmetic is numeric: its sums arrive as Decimal.
            acc[key] += float(getattr(row, key) or 0)

    def average(total: float, count: int) -> float | None:
        return _seconds(float(total) / count) if count else None

    return {
        "total_incidents": sum(by_status.values()),
        "open_count": by_status["open"],
        "acknowledged_count": by_status["acknowledged"],
        "resolved_count": by_status["resolved"],
        "avg_mtta_seconds": average(sum(a["mtta_sum"] for a in sums.values()), sum(a["mtta_n"] for a in sums.values())),
        "avg_mttr_seconds": average(sum(a["mttr_sum"] for a in sums.values()), sum(a["mttr_n"] for a in sums.values())),
        "mtta_percentiles": mtta_percentiles,
        "mttr_percentiles": mttr_percentiles,
        "by_severity": by_severity,
        "by_service": by_service,
        "by_status": by_status,
        "severity_breakdown": {
            severity: {
                "count": by_severity[severity],
                "unresolved": acc["unresolved"],
                "avg_mtta_seconds": average(acc["mtta_sum"], acc["mtta_n"]),
                "avg_mttr_seconds": average(acc["mttr_sum"], acc["mttr_n"]),
            }
            for severity, acc in sums.items()
        },
    }


def _percentiles(
    conn: Connection, values: tuple[sa.ColumnElement[float], ...], where: list
) -> list[dict[str, float | None]]:
    """The percentiles of each value, in order."""
    if conn.dialect.name == "postgresql":
        # One scan for all values: at a million rows each scan-and-sort costs about half a second.
        fractions = sa.literal([p for _, p in PERCENTILES], sa.ARRAY(sa.Float))
        found = conn.execute(
            sa.select(*(sa.func.percentile_cont(fractions).within_group(v) for v in values)).where(*where)
        ).one()
        found = [f or [None] * len(PERCENTILES) for f in found]
    else:
        found = [conn.execute(_interpolated_percentiles(v, where)).one() for v in values]
    return [{name: _seconds(v) for (name, _), v in zip(PERCENTILES, f, strict=True)} for f in found]


def _seconds(value: Any) -> float | None:
    """Durations to the microsecond, the precision of the timestamps they come from."""
    return round(float(value), 6) if value is not None else None


def _interpolated_percentiles(value: sa.ColumnElement[float], where: list) -> sa.Select:
    """percentile_cont for SQLite, which lacks it: rank the values, then interpolate between the
    two ranks around p·(n−1), exactly as PostgreSQL does."""
    ranked = (
        sa.select(
            value.label("x"),
            (sa.func.row_number().over(order_by=value) - 1).label("i"),
            sa.func.count().over().label("n"),
        )
        .where(*where, value.is_not(None))
        .subquery()
    )
    columns = []
    for _, p in PERCENTILES:
        position = p * (ranked.c.n - 1)
        low = sa.cast(position, sa.Integer)  # floor: positions are never negative
        high = low + sa.case((position > low, 1), else_=0)
        low_x = sa.func.max(sa.case((ranked.c.i == low, ranked.c.x)))
        high_x = sa.func.max(sa.case((ranked.c.i == high, ranked.c.x)))
        columns.append(low_x + sa.func.max(position - low) * (high_x - low_x))
    return sa.select(*columns)

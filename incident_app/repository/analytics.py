"""Aggregates over incidents, computed by the database in two queries on either dialect.

At a million rows the costs were the grouped pass and the percentiles' sort; what takes them away
(docs/performance.md, "Analytics when every request is new"):

- every count and sum comes from incident_days (migration 0011: per UTC day, service and severity,
  a count per status, kept exact by the database's triggers) for the days the window holds whole,
  and from the incidents for its partial first and last days, a range of the window index
  (migration 0008) with both durations already computed in it; at a million rows a 30-day window
  adds ~6,000 day rows instead of grouping ~245,000 incidents;
- with a filter, PostgreSQL sorts the matching durations (read from the window index) as whole
  microseconds in one scan for both, and the values at each percentile's ranks are interpolated as
  percentile_cont does;
- with no filter, nothing needs sorting: each duration has an index in its own order, and an exact
  percentile_cont is the value at rank ⌊p·(n−1)⌋ and the next, interpolated, read by walking that
  index from its nearer end. SQLite, which lacks percentile_cont, always reads ranks this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app.lifecycle import SEVERITIES, STATUSES, UNRESOLVED
from incident_app.tables import MTTA_SECONDS, MTTR_SECONDS, incident_days, incidents

PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))
MICROSECONDS = sa.literal(1_000_000.0, sa.Float)  # incident_days keeps whole microseconds
# Each duration with the timestamp it is NULL without: the condition of its partial index.
DURATIONS = ((MTTA_SECONDS, incidents.c.acknowledged_at), (MTTR_SECONDS, incidents.c.resolved_at))
# The same in whole microseconds, the timestamps' precision (exact: round(date_part · 10⁶) gives
# the microseconds back for every duration).
DURATION_MICROSECONDS = tuple(sa.cast(sa.func.round(seconds * 1_000_000), sa.BigInteger) for seconds, _ in DURATIONS)


@dataclass(frozen=True)
class AnalyticsFilters:
    service: str | None = None
    severity: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def key_clauses(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        """The service and severity filters, on `table` (incidents, or their day rows)."""
        clauses = []
        if self.service is not None:
            clauses.append(table.c.service == self.service)
        if self.severity is not None:
            clauses.append(table.c.severity == self.severity)
        return clauses

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        c = incidents.c
        clauses = self.key_clauses(incidents)
        if self.since is not None:
            clauses.append(c.created_at >= self.since)
        if self.until is not None:
            clauses.append(c.created_at < self.until)
        return clauses


def incident_analytics(conn: Connection, filters: AnalyticsFilters) -> dict[str, Any]:
    where = filters.clauses()
    groups = _groups(conn, filters)

    by_severity = dict.fromkeys(SEVERITIES, 0)
    by_status = dict.fromkeys(STATUSES, 0)
    by_service: dict[str, int] = {}
    sums = {s: {"unresolved": 0, "mtta_sum": 0.0, "mtta_n": 0, "mttr_sum": 0.0, "mttr_n": 0} for s in SEVERITIES}
    for row in groups:
        counted = {status: getattr(row, status) for status in STATUSES}
        n = sum(counted.values())
        by_severity[row.severity] += n
        for status, count in counted.items():
            by_status[status] += count
        by_service[row.service] = by_service.get(row.service, 0) + n
        acc = sums[row.severity]
        acc["unresolved"] += sum(counted[status] for status in UNRESOLVED)
        for key in ("mtta_n", "mttr_n", "mtta_sum", "mttr_sum"):
            acc[key] += getattr(row, key) or 0

    counts = [sum(a["mtta_n"] for a in sums.values()), sum(a["mttr_n"] for a in sums.values())]
    mtta_percentiles, mttr_percentiles = _percentiles(conn, where, counts)

    def average(total: float, count: int) -> float | None:
        return _seconds(float(total) / count) if count else None

    return {
        "total_incidents": sum(by_status.values()),
        "open_count": by_status["open"],
        "acknowledged_count": by_status["acknowledged"],
        "resolved_count": by_status["resolved"],
        "avg_mtta_seconds": average(sum(a["mtta_sum"] for a in sums.values()), counts[0]),
        "avg_mttr_seconds": average(sum(a["mttr_sum"] for a in sums.values()), counts[1]),
        "mtta_percentiles": mtta_percentiles,
        "mttr_percentiles": mttr_percentiles,
        "by_severity": by_severity,
        "by_service": dict(sorted(by_service.items())),
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


def _groups(conn: Connection, filters: AnalyticsFilters) -> Sequence[Row]:
    """Every count and every sum, a row per (service, severity) with a count per status: the
    window's whole UTC days from incident_days (kept by migration 0011's triggers), its partial
    first and last days from the incidents themselves, in one statement."""
    c, d = incidents.c, incident_days.c
    first, end = _whole_days(filters)
    parts: list[sa.Select] = []
    if first is None or end is None or first < end:
        days = [*filters.key_clauses(incident_days), *([d.day >= first] if first is not None else []),
                *([d.day < end] if end is not None else [])]
        parts.append(sa.select(
            d.service, d.severity, *(d[f"{status}_count"].label(status) for status in STATUSES),
            (d.mtta_us / MICROSECONDS).label("mtta_sum"), d.mtta_count.label("mtta_n"),
            (d.mttr_us / MICROSECONDS).label("mttr_sum"), d.mttr_count.label("mttr_n"),
        ).where(*days))
        ranges = [(filters.since, _midnight(first)), (_midnight(end), filters.until)]
    else:  # no whole day: the window is one range of incidents
        ranges = [(filters.since, filters.until)]
    for since, until in ranges:
        if since is None or until is None or since >= until:
            continue  # no partial day on that side
        window = AnalyticsFilters(filters.service, filters.severity, since, until)
        parts.append(sa.select(
            c.service, c.severity, *(_one_if(c.status == status).label(status) for status in STATUSES),
            MTTA_SECONDS.label("mtta_sum"), _one_if(c.acknowledged_at.is_not(None)).label("mtta_n"),
            MTTR_SECONDS.label("mttr_sum"), _one_if(c.resolved_at.is_not(None)).label("mttr_n"),
        ).where(*window.clauses()))
    if not parts:
        return []  # an empty window
    rows = sa.union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    counted = (*STATUSES, "mtta_n", "mttr_n")
    return conn.execute(
        sa.select(
            rows.c.service, rows.c.severity,
            *(sa.cast(sa.func.sum(rows.c[name]), sa.BigInteger).label(name) for name in counted),
            *(sa.func.sum(rows.c[name]).label(name) for name in ("mtta_sum", "mttr_sum")),
        ).group_by(rows.c.service, rows.c.severity)
        # a key whose incidents all moved away keeps rows of zeros until a fold
        .having(sum(sa.func.sum(rows.c[status]) for status in STATUSES) != 0)
    ).all()


def _one_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.case((condition, 1), else_=0)


def _whole_days(filters: AnalyticsFilters) -> tuple[date | None, date | None]:
    """The first UTC day the window holds whole and the day after its last (None: no bound)."""
    first = end = None
    if filters.since is not None:
        since = filters.since.astimezone(UTC)
        first = since.date() if since == _midnight(since.date()) else since.date() + timedelta(days=1)
    if filters.until is not None:
        end = filters.until.astimezone(UTC).date()
    return first, end


def _midnight(day: date | None) -> datetime | None:
    return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)


def _percentiles(conn: Connection, where: list, counts: list[int]) -> list[dict[str, float | None]]:
    """The percentiles of each duration, in order; `counts` are how many values each has."""
    if where and conn.dialect.name == "postgresql":
        found = _sorted_percentiles(conn, where, counts)
    else:
        found = _ranked_percentiles(conn, where, counts)
    return [{name: _seconds(v) for (name, _), v in zip(PERCENTILES, f, strict=True)} for f in found]


def _positions(n: int) -> list[tuple[float, int, int]]:
    """For each percentile p of n values: p·(n−1), and the 0-based ranks ⌊p·(n−1)⌋ and ⌈p·(n−1)⌉
    of the two values percentile_cont interpolates between (the same floats PostgreSQL computes)."""
    return [(p * (n - 1), math.floor(p * (n - 1)), math.ceil(p * (n - 1))) for _, p in PERCENTILES]


def _sorted_percentiles(conn: Connection, where: list, counts: list[int]) -> list[list[float | None]]:
    """percentile_cont of the window's durations, as PostgreSQL computes it, from one scan and one
    sort of each duration in whole microseconds: a 64-bit integer sort (specialised since
    PostgreSQL 15) takes ~15 ms less than sorting the seconds as floats at 245,000 values.
    percentile_disc reads the values at the ranks around each percentile, (r − ½)/n landing on rank
    r; each is turned back into the float date_part gives, and interpolated as percentile_cont does."""
    positions = [_positions(n) if n else [] for n in counts]
    ranks = [sorted({rank for _, low, high in around for rank in (low, high)}) for around in positions]
    fractions = [[(rank + 0.5) / n for rank in wanted] for wanted, n in zip(ranks, counts, strict=True)]
    found = conn.execute(sa.select(*(
        sa.func.percentile_disc(sa.literal(f or [0.5], sa.ARRAY(sa.Float))).within_group(microseconds)
        for f, microseconds in zip(fractions, DURATION_MICROSECONDS, strict=True)
    )).where(*where)).one()
    percentiles: list[list[float | None]] = []
    for around, wanted, values in zip(positions, ranks, found, strict=True):
        if not around or values is None:
            percentiles.append([None] * len(PERCENTILES))
            continue
        at = {rank: _date_part_seconds(value) for rank, value in zip(wanted, values, strict=True)}
        percentiles.append([at[low] + (position - low) * (at[high] - at[low]) for position, low, high in around])
    return percentiles


_DAY_US = 86_400_000_000


def _date_part_seconds(microseconds: int) -> float:
    """date_part('epoch', later − earlier) of a duration of whole microseconds, to the last bit:
    the difference of two timestamps keeps whole days apart from the rest (justify_hours, the
    division truncated), and date_part adds the two as floats (verified over 20,000 durations,
    negative and multi-day ones included; dividing the microseconds alone differed in ~5%)."""
    days = -(-microseconds // _DAY_US) if microseconds < 0 else microseconds // _DAY_US
    seconds = (microseconds - days * _DAY_US) / 1000000.0
    return seconds + 86400.0 * days


def _ranked_percentiles(conn: Connection, where: list, counts: list[int]) -> list[list[float | None]]:
    """percentile_cont from ranks, all in one statement: for n values and a fraction p, the values
    at ranks ⌊p·(n−1)⌋ and ⌈p·(n−1)⌉ (0-based), interpolated as PostgreSQL does. Each pair is read
    in the duration's order from the nearer end (OFFSET skips at most half the values)."""
    columns: list[sa.ScalarSelect | None] = []
    for (value, later), n in zip(DURATIONS, counts, strict=True):
        if not n:
            columns.extend([None] * len(PERCENTILES))
            continue
        for position, low, high in _positions(n):
            from_top = low > n - 1 - high
            pair = (
                sa.select(value.label("x"))
                .where(*where, later.is_not(None))
                .order_by(value.desc() if from_top else value)
                .offset(n - 1 - high if from_top else low)
                .limit(high - low + 1)
                .subquery()
            )
            x_low, x_high = sa.func.min(pair.c.x), sa.func.max(pair.c.x)
            columns.append(sa.select(x_low + (position - low) * (x_high - x_low)).scalar_subquery())
    wanted = [column for column in columns if column is not None]
    found = iter(conn.execute(sa.select(*wanted)).one() if wanted else ())
    values = [None if column is None else next(found) for column in columns]
    return [values[i:i + len(PERCENTILES)] for i in range(0, len(values), len(PERCENTILES))]


def _seconds(value: Any) -> float | None:
    """Durations to the microsecond, the precision of the timestamps they come from."""
    return round(float(value), 6) if value is not None else None

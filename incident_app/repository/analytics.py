"""Aggregates over incidents, computed by the database in a few statements on either dialect.

At a million rows the costs were the grouped pass and the percentiles' sort; what takes them away
(docs/performance.md, "Analytics when every request is new"):

- every count and sum comes from incident_days (migration 0011: per UTC day, service and severity,
  a count per status, kept exact by the database's triggers) for the days the window holds whole,
  and from the incidents for its partial first and last days, a range of the window index
  (migration 0008) with both durations already computed in it; at a million rows a 30-day window
  adds ~6,000 day rows instead of grouping ~245,000 incidents;
- with a time window alone (PostgreSQL), nothing of the window is sorted: every duration falls in
  one of migration 0012's fixed buckets, and how many of each the window holds (its whole days'
  from incident_duration_buckets, its partial days' from the window index) says which bucket
  holds each percentile's ranks; only those buckets' durations in the window are read, a range of
  the bucket index each (a few thousand at a million rows), and sorted;
- with a service or severity filter, PostgreSQL sorts the matching durations (read from the
  window index) as whole microseconds in one scan for both, and the values at each percentile's
  ranks are interpolated as percentile_cont does;
- with no filter, nothing needs sorting: each duration has an index in its own order, and an exact
  percentile_cont is the value at rank ⌊p·(n−1)⌋ and the next, interpolated, read by walking that
  index from its nearer end. SQLite, which lacks percentile_cont, always reads ranks this way."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from incident_app.lifecycle import SEVERITIES, STATUSES, UNRESOLVED
from incident_app.tables import (
    DURATION_BUCKETS,
    MTTA_SECONDS,
    MTTR_SECONDS,
    incident_days,
    incident_duration_buckets,
    incidents,
)

log = logging.getLogger(__name__)

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
    mtta_percentiles, mttr_percentiles = _percentiles(conn, filters, counts)

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
    days, partial = _split_days(filters, d.day)
    parts: list[sa.Select] = []
    if days is not None:
        parts.append(sa.select(
            d.service, d.severity, *(d[f"{status}_count"].label(status) for status in STATUSES),
            (d.mtta_us / MICROSECONDS).label("mtta_sum"), d.mtta_count.label("mtta_n"),
            (d.mttr_us / MICROSECONDS).label("mttr_sum"), d.mttr_count.label("mttr_n"),
        ).where(*filters.key_clauses(incident_days), *days))
    for window in partial:
        parts.append(sa.select(
            c.service, c.severity, *(_one_if(c.status == status).label(status) for status in STATUSES),
            MTTA_SECONDS.label("mtta_sum"), _one_if(c.acknowledged_at.is_not(None)).label("mtta_n"),
            MTTR_SECONDS.label("mttr_sum"), _one_if(c.resolved_at.is_not(None)).label("mttr_n"),
        ).where(*window.clauses()))
    if not parts:
        return []  # an empty window
    rows = _union(parts)
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


def _split_days(
    filters: AnalyticsFilters, day: sa.Column
) -> tuple[list[sa.ColumnElement[bool]] | None, list[AnalyticsFilters]]:
    """The window as the UTC days it holds whole (clauses on the `day` column of a table by day,
    None when there is no whole day) and its partial first and last days (windows of incidents)."""
    first, end = _whole_days(filters)
    if first is not None and end is not None and first >= end:  # no whole day: one range of incidents
        ranges = [(filters.since, filters.until)]
        days = None
    else:
        ranges = [(filters.since, _midnight(first)), (_midnight(end), filters.until)]
        days = [*([day >= first] if first is not None else []), *([day < end] if end is not None else [])]
    partial = [AnalyticsFilters(filters.service, filters.severity, since, until) for since, until in ranges
               # None: no partial day on that side
               if since is not None and until is not None and since < until]
    return days, partial


def _union(parts: list[sa.Select]) -> sa.Subquery:
    return sa.union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()


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


def _percentiles(conn: Connection, filters: AnalyticsFilters, counts: list[int]) -> list[dict[str, float | None]]:
    """The percentiles of each duration, in order; `counts` are how many values each has."""
    where = filters.clauses()
    if not where or conn.dialect.name != "postgresql":
        found = _ranked_percentiles(conn, where, counts)
    else:
        found = None
        if filters.service is None and filters.severity is None:
            found = _bucketed_percentiles(conn, filters, counts)
        if found is None:
            found = _sorted_percentiles(conn, where, counts)
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
        percentiles.append(_interpolated(around, at))
    return percentiles


def _interpolated(around: list[tuple[float, int, int]], at: dict[int, float]) -> list[float]:
    """percentile_cont's interpolation between the values `at` the ranks of each position."""
    return [at[low] + (position - low) * (at[high] - at[low]) for position, low, high in around]


def _bucketed_percentiles(
    conn: Connection, filters: AnalyticsFilters, counts: list[int]
) -> list[list[float | None]] | None:
    """percentile_cont of a time window's durations without sorting them (PostgreSQL, no service or
    severity filter): how many durations each bucket holds (migration 0012) says in which bucket
    each rank lies and at which rank inside it; only those buckets' durations in the window are
    read, a range of the bucket index each, and sorted. None if the buckets disagree with the
    `counts` or with the incidents (only a hand-edited table could): the caller sorts instead."""
    sizes = _bucket_sizes(conn, filters)
    positions, located = [], []
    for k in range(len(DURATIONS)):
        buckets = [(row[0], row[1 + k]) for row in sizes if row[1 + k]]
        if sum(size for _, size in buckets) != counts[k]:
            log.warning("duration buckets disagree with the day rows (%s); percentiles sorted", filters)
            return None
        around = _positions(counts[k]) if counts[k] else []
        positions.append(around)
        located.append(_locate(buckets, {rank for _, low, high in around for rank in (low, high)}))
    # One percentile_disc per (duration, bucket) read: (r + ½)/size lands on rank r inside it.
    reads = [(k, bucket, size, sorted({inside for b, inside, _ in at.values() if b == bucket}))
             for k, at in enumerate(located) for bucket, size in sorted({(b, size) for b, _, size in at.values()})]
    where = filters.clauses()
    found = conn.execute(sa.select(*(_bucket_values(where, *read) for read in reads))).one() if reads else ()
    if any(got is None for got in found):
        log.warning("duration buckets disagree with the incidents (%s); percentiles sorted", filters)
        return None
    values = {(k, bucket, inside): value for (k, bucket, _, ranks), got in zip(reads, found, strict=True)
              for inside, value in zip(ranks, got, strict=True)}
    return [
        _interpolated(around, {rank: values[(k, b, inside)] for rank, (b, inside, _) in at.items()})
        if around else [None] * len(PERCENTILES)
        for k, (around, at) in enumerate(zip(positions, located, strict=True))
    ]


def _bucket_values(where: list, k: int, bucket: int, size: int, inside: list[int]) -> sa.ScalarSelect:
    """The values at ranks `inside` of duration k's `size` values in `bucket` within the window
    (`where`, the filters' clauses)."""
    seconds, later = DURATIONS[k]
    fractions = sa.literal([(rank + 0.5) / size for rank in inside], sa.ARRAY(sa.Float))
    return (sa.select(sa.func.percentile_disc(fractions).within_group(seconds))
            .where(*where, later.is_not(None), DURATION_BUCKETS[k] == bucket).scalar_subquery())


def _locate(buckets: list[tuple[int, int]], ranks: set[int]) -> dict[int, tuple[int, int, int]]:
    """For each 0-based rank among the values of `buckets` ((bucket, size) in bucket order): the
    bucket holding it, its rank inside that bucket, and the bucket's size."""
    at, wanted, before = {}, sorted(ranks), 0
    for bucket, size in buckets:
        while wanted and wanted[0] < before + size:
            rank = wanted.pop(0)
            at[rank] = (bucket, rank - before, size)
        before += size
    return at


_BUCKET_COUNTS = ("mtta_count", "mttr_count")  # in DURATIONS' order


def _bucket_sizes(conn: Connection, filters: AnalyticsFilters) -> Sequence[Row]:
    """How many of the window's durations each bucket holds, in bucket order, a column per duration
    (mtta_count, mttr_count): its whole days' from incident_duration_buckets (kept by migration
    0012's triggers), its partial days' from the incidents (window index)."""
    b = incident_duration_buckets.c
    days, partial = _split_days(filters, b.day)
    parts: list[sa.Select] = []
    if days is not None:
        parts.append(sa.select(b.bucket, *(b[count] for count in _BUCKET_COUNTS)).where(*days))
    for window in partial:
        for k, ((_, later), bucket) in enumerate(zip(DURATIONS, DURATION_BUCKETS, strict=True)):
            parts.append(sa.select(
                bucket.label("bucket"),
                *(sa.literal(int(i == k), sa.BigInteger).label(count) for i, count in enumerate(_BUCKET_COUNTS)),
            ).where(*window.clauses(), later.is_not(None)))
    if not parts:
        return []
    rows = _union(parts)
    return conn.execute(
        sa.select(rows.c.bucket, *(sa.cast(sa.func.sum(rows.c[count]), sa.BigInteger).label(count)
                                   for count in _BUCKET_COUNTS))
        .group_by(rows.c.bucket).order_by(rows.c.bucket)
    ).all()


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

"""GET /api/v1/incidents/analytics: exact counts, averages and linearly interpolated percentiles
over a known data set, its filters, the empty case, bad queries, and that the database aggregates.

One file past 300 lines: the known data set and its hand-worked figures are shared by every case."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from incident_app.repository.analytics import (
    DURATIONS,
    AnalyticsFilters,
    _bucketed_percentiles,
    _sorted_percentiles,
)
from incident_app.tables import incidents

URL = "/api/v1/incidents/analytics"
SEVERITIES = ("critical", "high", "medium", "low")
STATUSES = ("open", "acknowledged", "resolved")
PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99))
# Microseconds that make acknowledgements cross second boundaries: SQLite's epoch arithmetic must hold.
T0 = datetime(2026, 11, 26, 10, 0, 0, 654321, tzinfo=UTC)


@dataclass(frozen=True)
class Seed:
    service: str
    severity: str
    created_at: datetime
    mtta: float | None = None  # seconds after created_at, or never acknowledged
    mttr: float | None = None  # seconds after created_at, or never resolved

    @property
    def status(self) -> str:
        return "resolved" if self.mttr is not None else "acknowledged" if self.mtta is not None else "open"


def hours(n: float) -> datetime:
    return T0 + timedelta(hours=n)


DATA_SET = (
    Seed("payment-api", "critical", hours(0), mtta=30.5, mttr=300.25),
    Seed("payment-api", "critical", hours(1), mtta=0.999999),
    Seed("payment-api", "high", hours(2)),
    Seed("checkout", "critical", hours(3), mttr=1800.000001),  # resolved straight from open
    Seed("checkout", "medium", hours(4), mtta=45.000001, mttr=7200.5),
    Seed("checkout", "low", hours(5), mtta=600),
    Seed("search", "high", hours(6), mtta=120.25, mttr=121),
    Seed("search", "high", hours(7)),
    Seed("payment-api", "low", hours(8), mtta=3600.75, mttr=86400),
    Seed("payment-api", "medium", hours(9)),
    Seed("search", "critical", hours(10), mtta=5.5),
)


# --------------------------------------------------------------------------- the expected answer


def percentile_cont(values: Iterable[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the ranks around fraction·(n−1)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def expected_analytics(seeds: Iterable[Seed]) -> dict:
    seeds = list(seeds)
    mtta = [s.mtta for s in seeds if s.mtta is not None]
    mttr = [s.mttr for s in seeds if s.mttr is not None]
    by_status = {status: sum(s.status == status for s in seeds) for status in STATUSES}
    services = sorted({s.service for s in seeds})

    def of(severity: str) -> list[Seed]:
        return [s for s in seeds if s.severity == severity]

    return {
        "total_incidents": len(seeds),
        "open_count": by_status["open"],
        "acknowledged_count": by_status["acknowledged"],
        "resolved_count": by_status["resolved"],
        "avg_mtta_seconds": mean(mtta),
        "avg_mttr_seconds": mean(mttr),
        "mtta_percentiles": {name: percentile_cont(mtta, p) for name, p in PERCENTILES},
        "mttr_percentiles": {name: percentile_cont(mttr, p) for name, p in PERCENTILES},
        "by_severity": {severity: len(of(severity)) for severity in SEVERITIES},
        "by_service": {service: sum(s.service == service for s in seeds) for service in services},
        "by_status": by_status,
        "severity_breakdown": {
            severity: {
                "count": len(of(severity)),
                "unresolved": sum(s.status != "resolved" for s in of(severity)),
                "avg_mtta_seconds": mean([s.mtta for s in of(severity) if s.mtta is not None]),
                "avg_mttr_seconds": mean([s.mttr for s in of(severity) if s.mttr is not None]),
            }
            for severity in SEVERITIES
        },
    }


def assert_matches(actual, expected, path: str = "") -> None:
    """Equal structure and key order; durations equal to the microsecond."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert list(actual) == list(expected), path
        for key in expected:
            assert_matches(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-6), path
    else:
        assert actual == expected and type(actual) is type(expected), path


# --------------------------------------------------------------------------- fixtures


def insert(app, seeds: Iterable[Seed]) -> None:
    """Rows straight into the table: exact, backdated timestamps for every incident."""
    rows = []
    for seed in seeds:
        def after(seconds: float | None, seed=seed) -> datetime | None:
            return None if seconds is None else seed.created_at + timedelta(seconds=seconds)

        rows.append({
            "id": uuid.uuid4(),
            "incident_id": f"inc-{uuid.uuid4().hex[:16]}",
            "title": "seeded",
            "service": seed.service,
            "severity": seed.severity,
            "status": seed.status,
            "notes": [],
            "created_at": seed.created_at,
            "acknowledged_at": after(seed.mtta),
            "resolved_at": after(seed.mttr),
            "updated_at": seed.created_at,
        })
    with app.extensions["engine"].begin() as conn:
        conn.execute(incidents.insert(), rows)


def analytics(client, **query) -> dict:
    response = client.get(URL, query_string=query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def seeded(app) -> tuple[Seed, ...]:
    insert(app, DATA_SET)
    return DATA_SET


# --------------------------------------------------------------------------- the known data set


def test_whole_data_set(client, seeded):
    body = analytics(client)
    assert_matches(body, expected_analytics(seeded))
    # Spot checks that do not depend on the helper above.
    assert body["total_incidents"] == 11
    assert (body["open_count"], body["acknowledged_count"], body["resolved_count"]) == (3, 3, 5)
    assert body["by_service"] == {"checkout": 3, "payment-api": 5, "search": 3}
    assert body["severity_breakdown"]["critical"] == {
        "count": 4, "unresolved": 2, "avg_mtta_seconds": pytest.approx((30.5 + 0.999999 + 5.5) / 3, abs=1e-6),
        "avg_mttr_seconds": pytest.approx((300.25 + 1800.000001) / 2, abs=1e-6),
    }


def test_percentiles_interpolate_linearly(client, app):
    # MTTA values 10, 20, 30, 40: p50 = 25, p90 = 37, p95 = 38.5, p99 = 39.7.
    insert(app, [Seed("api", "low", hours(i), mtta=10.0 * (i + 1)) for i in range(4)])
    body = analytics(client)
    assert body["mtta_percentiles"] == pytest.approx({"p50": 25.0, "p90": 37.0, "p95": 38.5, "p99": 39.7})
    assert body["avg_mtta_seconds"] == pytest.approx(25.0)
    assert body["mttr_percentiles"] == {"p50": None, "p90": None, "p95": None, "p99": None}
    assert body["avg_mttr_seconds"] is None


def test_one_value_is_every_percentile(client, app):
    insert(app, [Seed("api", "high", T0, mtta=0.000001, mttr=59.5)])
    body = analytics(client)
    assert body["mtta_percentiles"] == pytest.approx(dict.fromkeys(("p50", "p90", "p95", "p99"), 0.000001), abs=1e-9)
    assert body["mttr_percentiles"] == pytest.approx(dict.fromkeys(("p50", "p90", "p95", "p99"), 59.5))


def test_mtta_includes_resolved_incidents_that_were_acknowledged(client, app):
    insert(app, [
        Seed("api", "high", hours(0), mtta=60, mttr=600),
        Seed("api", "high", hours(1), mtta=120, mttr=900),
        Seed("api", "high", hours(2), mttr=30),  # never acknowledged: no MTTA
    ])
    body = analytics(client)
    assert body["acknowledged_count"] == 0
    assert body["avg_mtta_seconds"] == pytest.approx(90.0)
    assert body["mtta_percentiles"]["p50"] == pytest.approx(90.0)
    assert body["avg_mttr_seconds"] == pytest.approx(510.0)
    assert body["mttr_percentiles"]["p50"] == pytest.approx(600.0)


def test_durations_keep_microseconds_across_second_boundaries(client, app):
    created = datetime(2026, 11, 26, 10, 0, 0, 999999, tzinfo=UTC)
    insert(app, [Seed("api", "low", created, mtta=0.000002, mttr=1.5)])
    body = analytics(client)
    assert body["avg_mtta_seconds"] == pytest.approx(0.000002, abs=1e-9)
    assert body["avg_mttr_seconds"] == pytest.approx(1.5, abs=1e-9)


def test_timings_through_the_api_with_the_service_clock(client, clock):
    clock.set(T0)
    created = client.post("/api/v1/incidents", json={"title": "t", "service": "api", "severity": "medium"})
    incident_id = created.get_json()["incident_id"]
    for seconds, status in ((42.5, "acknowledged"), (100.25, "resolved")):
        clock.set(T0 + timedelta(seconds=seconds))
        assert client.patch(f"/api/v1/incidents/{incident_id}", json={"status": status}).status_code == 200
    body = analytics(client)
    assert (body["avg_mtta_seconds"], body["avg_mttr_seconds"]) == (42.5, 100.25)
    assert body["severity_breakdown"]["medium"]["avg_mtta_seconds"] == 42.5


# --------------------------------------------------------------------------- every rank

# With no filter PostgreSQL reads each percentile at its ranks from an index, walked from the nearer
# end; with a filter it sorts (percentile_cont); SQLite reads ranks either way. Each count below
# puts p·(n−1) on a rank or between two, below or above the middle, for both paths.


def ranked_seeds(count: int) -> list[Seed]:
    """`count` incidents of `api` in a scrambled order: MTTA in ties (four values), MTTR distinct to
    the microsecond; every third never acknowledged, every fourth never resolved (nulls); and an
    incident of `other` with the largest durations, which a filter leaves out."""
    seeds = []
    for i in range(count):
        k = (i * 37) % count  # every rank once, not in creation order
        mtta = None if i % 3 == 2 else 60.0 * (k % 4) + 0.5
        mttr = None if i % 4 == 3 else 100.0 * k + 0.000001 * i
        seeds.append(Seed("api", SEVERITIES[i % 4], hours(i / 60), mtta=mtta, mttr=mttr))
    return [*seeds, Seed("other", "low", hours(-1), mtta=10**6, mttr=10**7)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8, 11, 20, 101, 250])
def test_percentiles_are_exact_at_every_rank_with_and_without_filters(client, app, count):
    seeds = ranked_seeds(count)
    insert(app, seeds)
    later = hours(count / 120)  # about half of `api`'s incidents
    for query, keep in (
        ({}, lambda s: True),
        ({"service": "api"}, lambda s: s.service == "api"),
        ({"since": later.isoformat()}, lambda s: s.created_at >= later),
        (
            {"until": later.isoformat(), "severity": "critical"},
            lambda s: s.created_at < later and s.severity == "critical",
        ),
    ):
        assert_matches(analytics(client, **query), expected_analytics(s for s in seeds if keep(s)))


def test_percentiles_of_equal_values_are_that_value(client, app):
    insert(app, [Seed("api", "high", hours(i), mtta=42.25, mttr=None if i % 2 else 7.0) for i in range(9)])
    for query in ({}, {"service": "api"}):
        body = analytics(client, **query)
        assert body["mtta_percentiles"] == dict.fromkeys(("p50", "p90", "p95", "p99"), 42.25)
        assert body["mttr_percentiles"] == dict.fromkeys(("p50", "p90", "p95", "p99"), 7.0)


def test_an_acknowledge_between_the_two_queries_does_not_shift_the_ranks(client, app):
    """The percentiles are read at ranks the grouped pass counted: both must see one snapshot."""
    engine: sa.Engine = app.extensions["engine"]
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's reads are one transaction, and a writer would wait for this one")
    before = [Seed("api", "high", hours(i), mtta=10.0 * (i + 1), mttr=100.0 * (i + 1)) for i in range(10)]
    insert(app, before)
    written = []

    def write_between(conn, cursor, statement, parameters, context, executemany) -> None:
        if "GROUP BY" in statement and not written:
            written.append(True)  # committed by another connection after the counts, before the ranks
            insert(app, [Seed("api", "low", hours(20), mtta=10**6, mttr=10**7), Seed("api", "low", hours(21), mtta=1)])

    sa.event.listen(engine, "after_cursor_execute", write_between)
    try:
        body = analytics(client)
    finally:
        sa.event.remove(engine, "after_cursor_execute", write_between)
    assert written
    assert_matches(body, expected_analytics(before))


# --------------------------------------------------------------------------- filters


WINDOW_START, WINDOW_END = hours(3), hours(8)


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        ({"service": "payment-api"}, lambda s: s.service == "payment-api"),
        ({"service": "nothing-here"}, lambda s: False),
        ({"severity": "critical"}, lambda s: s.severity == "critical"),
        ({"severity": "high", "service": "search"}, lambda s: s.severity == "high" and s.service == "search"),
        # `since` is inclusive: the incident created exactly at hours(3) counts.
        ({"since": WINDOW_START.isoformat()}, lambda s: s.created_at >= WINDOW_START),
        # `until` is exclusive: the incident created exactly at hours(8) does not.
        ({"until": WINDOW_END.isoformat()}, lambda s: s.created_at < WINDOW_END),
        (
            {"since": WINDOW_START.isoformat(), "until": WINDOW_END.isoformat()},
            lambda s: WINDOW_START <= s.created_at < WINDOW_END,
        ),
        # Another offset for the same instants.
        (
            {
                "since": WINDOW_START.astimezone(timezone(timedelta(hours=2))).isoformat(),
                "until": WINDOW_END.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat(),
            },
            lambda s: WINDOW_START <= s.created_at < WINDOW_END,
        ),
        ({"since": "2026-11-26T13:00:00.654321Z"}, lambda s: s.created_at >= WINDOW_START),
        ({"since": hours(2).isoformat(), "until": hours(2).isoformat()}, lambda s: False),
        (
            {"service": "checkout", "severity": "critical", "since": hours(0).isoformat()},
            lambda s: s.service == "checkout" and s.severity == "critical",
        ),
    ],
)
def test_filters(client, seeded, query, keep):
    expected = expected_analytics(s for s in seeded if keep(s))
    assert_matches(analytics(client, **query), expected)


def test_filter_to_nothing_still_has_every_severity_and_status(client, seeded):
    body = analytics(client, service="nothing-here")
    assert body["by_severity"] == dict.fromkeys(SEVERITIES, 0)
    assert body["by_status"] == dict.fromkeys(STATUSES, 0)
    assert body["by_service"] == {}


# --------------------------------------------------------------------------- empty and shape


def test_empty_database_gives_zeros_and_nulls(client):
    nulls = {"p50": None, "p90": None, "p95": None, "p99": None}
    body = analytics(client)
    assert body == {
        "total_incidents": 0, "open_count": 0, "acknowledged_count": 0, "resolved_count": 0,
        "avg_mtta_seconds": None, "avg_mttr_seconds": None,
        "mtta_percentiles": nulls, "mttr_percentiles": nulls,
        "by_severity": {"critical": 0, "high": 0, "medium": 0, "low": 0},
        "by_service": {},
        "by_status": {"open": 0, "acknowledged": 0, "resolved": 0},
        "severity_breakdown": {
            severity: {"count": 0, "unresolved": 0, "avg_mtta_seconds": None, "avg_mttr_seconds": None}
            for severity in SEVERITIES
        },
    }


def test_response_shape_is_the_contract(client, seeded):
    body = analytics(client)
    assert list(body) == [
        "total_incidents", "open_count", "acknowledged_count", "resolved_count",
        "avg_mtta_seconds", "avg_mttr_seconds", "mtta_percentiles", "mttr_percentiles",
        "by_severity", "by_service", "by_status", "severity_breakdown",
    ]
    for name in ("mtta_percentiles", "mttr_percentiles"):
        assert list(body[name]) == ["p50", "p90", "p95", "p99"]
        assert all(isinstance(v, float) for v in body[name].values())
    assert list(body["by_severity"]) == list(SEVERITIES)
    assert list(body["by_status"]) == list(STATUSES)
    assert list(body["severity_breakdown"]) == list(SEVERITIES)
    for breakdown in body["severity_breakdown"].values():
        assert list(breakdown) == ["count", "unresolved", "avg_mtta_seconds", "avg_mttr_seconds"]
    for name in ("total_incidents", "open_count", "acknowledged_count", "resolved_count"):
        assert type(body[name]) is int
    assert all(type(v) is int for v in body["by_service"].values())


# --------------------------------------------------------------------------- bad queries


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"since": "2026-11-26T10:00:00"}, "since"),  # no UTC offset: ambiguous
        ({"until": "2026-11-26 10:00:00"}, "until"),
        ({"since": "2026-11-26"}, "since"),
        ({"since": "2026-11-27T00:00:00Z", "until": "2026-11-26T00:00:00Z"}, "since"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),  # before year 1 once in UTC
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),  # after year 9999 once in UTC
        ({"severity": "urgent"}, "severity"),
        ({"service": "a\x00b"}, "service"),
    ],
)
def test_bad_queries_are_422_naming_the_field(client, query, field):
    response = client.get(URL, query_string=query)
    assert response.status_code == 422
    body = response.get_json()
    assert (body["code"], body["status"]) == (422, "Unprocessable Entity")
    assert field in body["errors"], body


def test_unknown_query_parameters_are_ignored(client, seeded):
    assert_matches(analytics(client, group_by="service", window="7d"), expected_analytics(seeded))


# --------------------------------------------------------------------------- aggregated by the database


def test_analytics_are_a_few_aggregate_queries(client, app):
    """Many incidents in, a handful of rows out: the database aggregates, Python does not."""
    many = [
        Seed(f"svc-{i % 3}", SEVERITIES[i % 4], hours(i / 60), mtta=i % 7 * 10.0 or None, mttr=(i % 5) * 100.0 or None)
        for i in range(400)
    ]
    insert(app, many)
    engine: sa.Engine = app.extensions["engine"]
    statements: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, parameters))

    sa.event.listen(engine, "after_cursor_execute", record)
    try:
        body = analytics(client)
    finally:
        sa.event.remove(engine, "after_cursor_execute", record)

    assert_matches(body, expected_analytics(many))
    assert 1 <= len(statements) <= 4, [s for s, _ in statements]
    # Run each statement again and count what it returns: aggregates give a few rows, not 400.
    with engine.connect() as conn:
        returned = [len(conn.exec_driver_sql(statement, parameters).fetchall()) for statement, parameters in statements]
    # At most one row per (service, severity, status) present: 36 groups here, whatever the rows.
    groups = {(s.service, s.severity, s.status) for s in many}
    assert len(groups) == 36 and max(returned) <= len(groups), returned
    assert sum(returned) <= len(groups) + 4, returned


@pytest.mark.parametrize(("query", "parallel"), [({}, True), ({"service": "api"}, True),
                                                 ({"since": WINDOW_START.isoformat()}, False),
                                                 ({"until": WINDOW_END.isoformat()}, False)])
def test_analytics_statements_run_under_their_settings(client, app, query, parallel):
    """PostgreSQL: index paths only, room for the percentiles' sort and no JIT compilation in every
    analytics transaction, and no parallel workers for a time window; nothing of it outlives the
    transaction."""
    engine: sa.Engine = app.extensions["engine"]
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner settings")
    insert(app, [Seed("api", "high", hours(i), mtta=10.0 * (i + 1), mttr=100.0 * (i + 1)) for i in range(10)])
    names = ("enable_seqscan", "work_mem", "jit", "max_parallel_workers_per_gather")
    seen: list[tuple[str, ...]] = []

    def read_settings(conn, cursor, statement, parameters, context, executemany) -> None:
        if "GROUP BY" in statement:
            cursor.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in names))
            seen.append(cursor.fetchone())

    sa.event.listen(engine, "after_cursor_execute", read_settings)
    try:
        assert client.get("/api/v1/incidents/analytics", query_string=query).status_code == 200
    finally:
        sa.event.remove(engine, "after_cursor_execute", read_settings)
    with engine.connect() as conn:
        default_parallel = conn.exec_driver_sql("SHOW max_parallel_workers_per_gather").scalar_one()
        after = tuple(conn.exec_driver_sql(f"SHOW {name}").scalar_one() for name in names)
        default_jit = conn.exec_driver_sql("SELECT reset_val FROM pg_settings WHERE name = 'jit'").scalar_one()
    assert seen and set(seen) == {("off", "16MB", "off", default_parallel if parallel else "0")}
    assert after[0] == "on" and after[1] != "16MB" and after[2] == default_jit


@pytest.mark.parametrize("path", ["sorted", "bucketed"])
def test_windowed_percentiles_are_percentile_cont_to_the_last_bit(app, path):
    """PostgreSQL: a window's percentiles sort whole microseconds (with a service or severity
    filter) or only the buckets holding each rank (without; migration 0012), and interpolate in
    Python; every value equals PostgreSQL's own percentile_cont over the float durations, bit for
    bit (durations of days, sub-second ones, odd microsecond gaps that interpolate onto half
    microseconds, negative ones and ones past the last bucket's threshold, many equal ones)."""
    engine: sa.Engine = app.extensions["engine"]
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's percentile_cont")
    rng = random.Random(3)
    for n in (1, 2, 3, 7, 100, 1001, 3000):
        with engine.begin() as conn:
            conn.execute(incidents.delete())
        day = 86_400 * 10**6  # µs; between one day and three, date_part's float sum of days and seconds
        # differs from dividing the microseconds in about one duration of seven
        spans = ((1, 10**9), (day, 3 * day), (1, 400 * day), (-10**7, 1), (36 * 365 * day, 40 * 365 * day),
                 (60 * 10**6, 60 * 10**6 + 3))
        durations = [rng.randrange(*rng.choice(spans)) / 1e6 for _ in range(n)]
        seeds = [Seed("api", "high", hours(i % 24), mtta=d, mttr=d * 3 + 0.000001) for i, d in enumerate(durations)]
        insert(app, seeds)
        where = [incidents.c.created_at >= T0]
        with engine.connect() as conn:
            fractions = sa.literal([p for _, p in PERCENTILES], sa.ARRAY(sa.Float))
            cont = (sa.func.percentile_cont(fractions).within_group(value) for value, _ in DURATIONS)
            expected = conn.execute(sa.select(*cont).where(*where)).one()
            if path == "sorted":
                found = _sorted_percentiles(conn, where, [n, n])
            else:
                found = _bucketed_percentiles(conn, AnalyticsFilters(since=T0), [n, n])
        assert [list(e) for e in expected] == found, n

"""Analytics over many days: the whole days of a window come from incident_days (migration 0011's
triggers), its partial first and last days from the incidents; on PostgreSQL a window's percentiles
are found from incident_duration_buckets (0012). Every window, filter and change below must give
what the incidents themselves give, and both tables must always equal their recomputation from
them."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from incident_app.repository import counts
from incident_app.tables import DURATION_BUCKETS, incident_days, incident_duration_buckets, incidents
from tests.test_analytics import Seed, analytics, assert_matches, expected_analytics, insert

DAY0 = datetime(2026, 11, 20, tzinfo=UTC)  # a midnight, UTC
SERVICES = ("payment-api", "checkout", "search")
SEVERITIES = ("critical", "high", "medium", "low")
MICROSECOND = timedelta(microseconds=1)
SUMS = tuple(column.name for column in incident_days.c if not column.primary_key)  # what a day row adds up


def at(days: float, microseconds: int = 0) -> datetime:
    return DAY0 + timedelta(days=days, microseconds=microseconds)


def many_days(count: int = 160, seed: int = 11) -> list[Seed]:
    """Incidents over six days, some right on a midnight or a microsecond either side of one."""
    rng = random.Random(seed)
    seeds = []
    for i in range(count):
        on_midnight = i % 10 == 0
        created = at(rng.randrange(0, 6), rng.choice((-1, 0, 1))) if on_midnight else at(rng.uniform(0, 6))
        mtta = round(rng.uniform(0.000001, 7200), 6) if rng.random() < 0.7 else None
        mttr = round((mtta or 0) + rng.uniform(1, 90_000), 6) if rng.random() < 0.5 else None
        seeds.append(Seed(rng.choice(SERVICES), rng.choice(SEVERITIES), created, mtta=mtta, mttr=mttr))
    return seeds


WINDOWS = [
    {},
    {"since": at(2)},  # a midnight: every day from it whole
    {"until": at(4)},
    {"since": at(1.25), "until": at(4.5)},  # partial days at both ends
    {"since": at(1, 1), "until": at(5, -1)},  # a microsecond inside each midnight
    {"since": at(2, -1), "until": at(3, 1)},
    {"since": at(2.1), "until": at(2.9)},  # within one day
    {"since": at(3), "until": at(3)},  # empty
    {"since": at(-10)},
    {"until": at(0)},  # before everything
    {"since": at(0.5)},
    {"until": at(5.75)},
]
FILTERS = [{}, {"service": "checkout"}, {"severity": "high"}, {"service": "search", "severity": "low"}]


def in_window(seed: Seed, window: dict, filters: dict) -> bool:
    return ((window.get("since") is None or seed.created_at >= window["since"])
            and (window.get("until") is None or seed.created_at < window["until"])
            and all(getattr(seed, name) == value for name, value in filters.items()))


def query(window: dict, filters: dict) -> dict:
    return {**filters, **{name: value.isoformat() for name, value in window.items()}}


def stored_seeds(engine: sa.Engine) -> list[Seed]:
    """The incidents as they are now, as Seeds."""
    c = incidents.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.service, c.severity, c.created_at, c.acknowledged_at, c.resolved_at)).all()

    def seconds(later: datetime | None, created: datetime) -> float | None:
        return None if later is None else (later - created) / MICROSECOND / 1_000_000

    return [Seed(r.service, r.severity, r.created_at, seconds(r.acknowledged_at, r.created_at),
                 seconds(r.resolved_at, r.created_at)) for r in rows]


def kept_and_recomputed(engine: sa.Engine) -> tuple[dict, dict]:
    """incident_days summed over its shards, and the same sums recomputed from the incidents."""
    d, c = incident_days.c, incidents.c
    with engine.connect() as conn:
        kept = {
            (row.day, row.service, row.severity): tuple(row[3:])
            for row in conn.execute(
                sa.select(d.day, d.service, d.severity, *(sa.func.sum(d[name]) for name in SUMS))
                .group_by(d.day, d.service, d.severity)
            )
            if any(row[3:])
        }
        rows = conn.execute(sa.select(c.service, c.severity, c.status, c.created_at, c.acknowledged_at,
                                      c.resolved_at)).all()
    recomputed: dict = {}
    for row in rows:
        key = (row.created_at.date(), row.service, row.severity)
        sums = Counter(dict(zip(SUMS, recomputed.get(key, (0,) * len(SUMS)), strict=True)))
        sums[f"{row.status}_count"] += 1
        for name, later in (("mtta", row.acknowledged_at), ("mttr", row.resolved_at)):
            if later is not None:
                sums[f"{name}_us"] += (later - row.created_at) // MICROSECOND
                sums[f"{name}_count"] += 1
        recomputed[key] = tuple(sums[name] for name in SUMS)
    return kept, recomputed


def buckets_kept_and_recomputed(engine: sa.Engine) -> tuple[dict, dict]:
    """incident_duration_buckets summed over its shards, and the same counts recomputed from the
    incidents by the bucket indexes' own expressions (PostgreSQL; nothing on SQLite)."""
    if engine.dialect.name != "postgresql":
        return {}, {}
    b, c = incident_duration_buckets.c, incidents.c
    recomputed: Counter = Counter()
    with engine.connect() as conn:
        kept = {(row.day, row.bucket): (row.mtta, row.mttr) for row in conn.execute(
            sa.select(b.day, b.bucket, sa.func.sum(b.mtta_count).label("mtta"), sa.func.sum(b.mttr_count).label("mttr"))
            .group_by(b.day, b.bucket)) if row.mtta or row.mttr}
        for k, (bucket, later) in enumerate(zip(DURATION_BUCKETS, (c.acknowledged_at, c.resolved_at), strict=True)):
            for created, in_bucket in conn.execute(sa.select(c.created_at, bucket).where(later.is_not(None))):
                recomputed[(created.date(), in_bucket, k)] += 1
    return kept, {(day, bucket): (recomputed[(day, bucket, 0)], recomputed[(day, bucket, 1)])
                  for day, bucket, _ in recomputed}


def assert_derived_tables_exact(engine: sa.Engine) -> None:
    kept, recomputed = kept_and_recomputed(engine)
    assert kept == recomputed
    kept, recomputed = buckets_kept_and_recomputed(engine)
    assert kept == recomputed


def assert_every_window(client, seeds: list[Seed]) -> None:
    for window in WINDOWS:
        for filters in FILTERS:
            expected = expected_analytics(s for s in seeds if in_window(s, window, filters))
            body = analytics(client, **query(window, filters))
            assert_matches(body, expected, f"{window} {filters}")


def test_every_window_and_filter_matches_the_incidents_it_holds(client, app):
    seeds = many_days()
    insert(app, seeds)
    assert_derived_tables_exact(app.extensions["engine"])
    assert_every_window(client, seeds)


def test_changes_of_every_kind_keep_the_days_exact(client, app, clock):
    engine: sa.Engine = app.extensions["engine"]
    insert(app, many_days(80, seed=5))
    # Through the API: new incidents, acknowledged and resolved on later days than they were created.
    clock.set(at(4.9))
    made = [client.post("/api/v1/incidents", json={"title": "t", "service": s, "severity": "high"}).get_json()
            for s in SERVICES]
    for i, incident in enumerate(made):
        clock.set(at(5.2 + i / 10))
        url = f"/api/v1/incidents/{incident['incident_id']}"
        assert client.patch(url, json={"status": "acknowledged"}).status_code == 200
        assert client.patch(url, json={"note": "looking", "author": "ana"}).status_code == 200
        if i:
            assert client.patch(url, json={"status": "resolved"}).status_code == 200
    # By hand, as an operator's SQL would: a severity changed, an incident moved to another day,
    # an acknowledgement undone, rows deleted; several rows in one statement each.
    c = incidents.c
    with engine.begin() as conn:
        conn.execute(incidents.update().where(c.service == "search").values(severity="critical"))
        moved = conn.execute(sa.select(c.id, c.created_at).where(c.service == "checkout", c.status == "open")).all()
        move = incidents.update().where(c.id == sa.bindparam("moved_id")).values(created_at=sa.bindparam("moved_at"))
        conn.execute(move, [{"moved_id": row.id, "moved_at": row.created_at - timedelta(days=1)} for row in moved])
        conn.execute(incidents.update().where(c.status == "acknowledged", c.severity == "low")
                     .values(acknowledged_at=None, status="open"))
        conn.execute(incidents.delete().where(c.severity == "medium", c.service == "payment-api"))
    assert_derived_tables_exact(engine)
    assert_every_window(client, stored_seeds(engine))


def test_folding_the_shards_changes_no_answer(client, app):
    engine: sa.Engine = app.extensions["engine"]
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps one shard")
    seeds = many_days(120, seed=7)
    insert(app, seeds)
    d = incident_days.c
    with engine.connect() as conn:
        sharded = conn.execute(sa.select(sa.func.count()).where(d.shard != 0)).scalar_one()
    assert sharded > 0, "the bulk insert spread the keys over shards"
    assert counts.fold_shards(engine) is True
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(d.shard != 0)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).where(incident_duration_buckets.c.shard != 0)).scalar_one() == 0
    assert_derived_tables_exact(engine)
    assert_every_window(client, seeds)
    # After everything of a key is gone, its rows go too.
    with engine.begin() as conn:
        conn.execute(incidents.delete())
    assert counts.fold_shards(engine) is True
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(incident_days)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(incident_duration_buckets)).scalar_one() == 0


def test_whole_days_are_read_from_the_day_rows(client, app):
    """Only the partial days are read from incidents: rows of incident_days changed by hand change
    the answer for a window holding that day whole, not for one holding part of it."""
    engine: sa.Engine = app.extensions["engine"]
    insert(app, [Seed("api", "high", at(2.5), mtta=60.0)])
    d = incident_days.c
    with engine.begin() as conn:
        conn.execute(incident_days.update().where(d.day == at(2).date())
                     .values(acknowledged_count=d.acknowledged_count + 1000))
    assert analytics(client, since=at(2).isoformat())["total_incidents"] == 1001
    assert analytics(client, since=at(2, 1).isoformat())["total_incidents"] == 1
    assert analytics(client, until=at(3, -1).isoformat())["total_incidents"] == 1


def test_a_new_incident_counts_in_its_day_at_once(client, app, clock):
    clock.set(at(3.5))
    for severity in SEVERITIES:
        assert client.post("/api/v1/incidents", json={
            "title": "t", "service": "api", "severity": severity, "dedup_key": str(uuid.uuid4())}).status_code == 201
    body = analytics(client, since=at(3).isoformat(), until=at(4).isoformat())
    assert body["total_incidents"] == 4 and body["by_severity"] == dict.fromkeys(SEVERITIES, 1)


def test_window_percentiles_are_found_from_the_bucket_rows(client, app, caplog):
    """PostgreSQL: a window's percentiles come from the buckets' day rows: a count moved by hand from
    one bucket to another (totals kept) changes the answer for a window holding that day whole, not
    for one holding part of it; a count the day rows disagree with is not trusted (the window's
    durations are sorted instead, and the disagreement is logged)."""
    engine: sa.Engine = app.extensions["engine"]
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite ranks from the durations' indexes")
    seeds = [Seed("api", "high", at(2.5), mtta=seconds) for seconds in (10.0, 20.0, 40.0, 80.0, 160.0)]
    insert(app, seeds)
    truth = expected_analytics(seeds)["mtta_percentiles"]
    assert_matches(analytics(client, since=at(2).isoformat())["mtta_percentiles"], truth)
    b = incident_duration_buckets.c
    with engine.connect() as conn:
        low, high = conn.execute(sa.select(sa.func.min(b.bucket), sa.func.max(b.bucket))
                                 .where(b.mtta_count > 0)).one()
    extra = incident_duration_buckets.insert().values(day=at(2).date(), mttr_count=0)  # rows beside the 8 shards
    with engine.begin() as conn:
        for bucket, change in ((high, -1), (low, 1)):
            conn.execute(extra.values(bucket=bucket, shard=100 + change, mtta_count=change))
    moved = analytics(client, since=at(2).isoformat())["mtta_percentiles"]
    assert moved["p99"] < truth["p99"], "the whole day's bucket sizes were read from their rows"
    assert_matches(analytics(client, since=at(2, 1).isoformat())["mtta_percentiles"], truth)

    with engine.begin() as conn:
        conn.execute(extra.values(bucket=high, shard=102, mtta_count=5))
    with caplog.at_level("WARNING", logger="incident_app.repository.analytics"):
        assert_matches(analytics(client, since=at(2).isoformat())["mtta_percentiles"], truth)
    assert "duration buckets disagree" in caplog.text

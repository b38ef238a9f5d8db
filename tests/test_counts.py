"""Exact totals from incident_counts: whoever writes to incidents (the API, bulk SQL, concurrent
transactions, a migration's backfill), the counts the database's triggers keep equal count(*).

One file past 300 lines: each writer is a case of one invariant, checked by `assert_counts_exact`."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from prometheus_client.parser import text_string_to_metric_families

from incident_app import migrate
from incident_app.lifecycle import SEVERITIES, STATUSES, UNRESOLVED
from incident_app.repository import counts
from incident_app.settings import Settings
from incident_app.tables import SCHEMA, incident_counts, incidents

URL = "/api/v1/incidents"
SERVICES = ("payment-api", "checkout", "search")
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

postgresql_only = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


# --------------------------------------------------------------------------- helpers


def plain_engine(url: str, **options: Any) -> sa.Engine:
    """An engine that is not the service's: another writer, like an operator's or a replica's."""
    engine = sa.create_engine(url, **options)
    return engine.execution_options(schema_translate_map={SCHEMA: None}) if url.startswith("sqlite") else engine


@pytest.fixture
def db(database_url) -> Iterator[sa.Engine]:
    engine = plain_engine(database_url, pool_size=10)
    yield engine
    engine.dispose()


def incident_rows(count: int, *, first: int = 0) -> list[dict[str, Any]]:
    """`count` incidents spread over every (service, severity, status), written without the service."""
    return [
        {
            "id": uuid.uuid4(), "incident_id": f"inc-{n:016x}", "title": f"seeded {n}",
            "service": SERVICES[n % 3], "severity": SEVERITIES[n // 3 % 4], "status": STATUSES[n // 12 % 3],
            "notes": [], "created_at": T0 + timedelta(seconds=n), "updated_at": T0 + timedelta(seconds=n),
        }
        for n in range(first, first + count)
    ]


def insert_in_one_statement(engine: sa.Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(incidents.insert().values(rows))


def counted(conn: sa.Connection) -> dict[tuple[str, str, str], int]:
    """The truth: count(*) of incidents per (service, severity, status)."""
    rows = conn.execute(
        sa.select(incidents.c.service, incidents.c.severity, incidents.c.status, sa.func.count())
        .group_by(incidents.c.service, incidents.c.severity, incidents.c.status)
    )
    return {(service, severity, status): n for service, severity, status, n in rows}


def kept(conn: sa.Connection) -> dict[tuple[str, str, str], int]:
    """What the triggers keep, summed over shards, leaving out keys whose incidents all went elsewhere."""
    c = incident_counts.c
    rows = conn.execute(
        sa.select(c.service, c.severity, c.status, sa.func.sum(c.count))
        .group_by(c.service, c.severity, c.status)
        .having(sa.func.sum(c.count) != 0)
    )
    return {(service, severity, status): int(n) for service, severity, status, n in rows}


def assert_counts_exact(engine: sa.Engine) -> dict[tuple[str, str, str], int]:
    with engine.connect() as conn:
        truth = counted(conn)
        assert kept(conn) == truth
    return truth


def assert_list_totals_exact(client, engine: sa.Engine) -> None:
    """Every combination of filters, unknown values included, totals what count(*) says."""
    truth = assert_counts_exact(engine)
    for status, severity, service in itertools.product(
        (None, *STATUSES), (None, *SEVERITIES), (None, *SERVICES, "no-such-service")
    ):
        filters = {k: v for k, v in (("status", status), ("severity", severity), ("service", service)) if v}
        expected = sum(
            n for (svc, sev, st), n in truth.items()
            if (service or svc, severity or sev, status or st) == (svc, sev, st)
        )
        # offset=1: the total then always comes from the counts, never from the length of the page.
        response = client.get(URL, query_string={**filters, "limit": 1, "offset": 1})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["total"] == expected, filters


def patch(client, incident_id: str, expected_status: int = 200, **body) -> None:
    response = client.patch(f"{URL}/{incident_id}", json=body)
    assert response.status_code == expected_status, response.get_json()


# --------------------------------------------------------------------------- the service writing


def test_empty_database_has_no_counts(client, db):
    assert_list_totals_exact(client, db)


def test_list_totals_follow_creates_and_every_transition(client, db, create_incident):
    made = [create_incident(service=service, severity=severity)["incident_id"]
            for service in SERVICES for severity in SEVERITIES]
    assert_list_totals_exact(client, db)

    acknowledged_then_resolved, resolved_directly, acknowledged, untouched = (made[i::4] for i in range(4))
    for incident_id in acknowledged_then_resolved + acknowledged:
        patch(client, incident_id, status="acknowledged")
    for incident_id in acknowledged_then_resolved + resolved_directly:
        patch(client, incident_id, status="resolved")
    assert_list_totals_exact(client, db)

    # Changes that move no incident between counts: same status again, refused, notes, assignee.
    patch(client, acknowledged[0], status="acknowledged")
    patch(client, resolved_directly[0], 400, status="open")
    patch(client, untouched[0], note="looking", assigned_to="carol")
    assert_list_totals_exact(client, db)


# --------------------------------------------------------------------------- anyone else writing

_statuses_swapped = sa.case(
    (incidents.c.status == "open", "acknowledged"), (incidents.c.status == "acknowledged", "open"),
    else_=incidents.c.status,
)

RAW_WRITES: dict[str, Callable[[], sa.Executable]] = {
    "insert_of_many_rows": lambda: incidents.insert().values(incident_rows(150, first=1000)),
    "update_of_the_status_of_many_rows": lambda: (
        incidents.update().where(incidents.c.status != "resolved").values(status="resolved")
    ),
    "update_moving_rows_both_ways": lambda: incidents.update().values(status=_statuses_swapped),
    "update_of_service_and_severity": lambda: (
        incidents.update().where(incidents.c.service == "search").values(service="checkout", severity="low")
    ),
    "update_of_columns_that_are_not_counted": lambda: incidents.update().values(assigned_to="dave", title="renamed"),
    "delete_of_many_rows": lambda: incidents.delete().where(incidents.c.severity.in_(["critical", "high"])),
    "delete_of_every_row": lambda: incidents.delete(),
}


@pytest.mark.parametrize("write", RAW_WRITES.values(), ids=RAW_WRITES.keys())
def test_list_totals_stay_exact_after_any_sql_statement(client, db, write):
    insert_in_one_statement(db, incident_rows(240))
    assert_list_totals_exact(client, db)
    with db.begin() as conn:
        conn.execute(write())
    assert_list_totals_exact(client, db)


def test_rolled_back_writes_leave_the_counts_as_they_were(client, db):
    insert_in_one_statement(db, incident_rows(60))
    with db.connect() as conn, conn.begin() as transaction:
        conn.execute(incidents.insert().values(incident_rows(30, first=500)))
        conn.execute(incidents.update().values(status="resolved"))
        transaction.rollback()
    assert_list_totals_exact(client, db)


@postgresql_only
def test_truncate_empties_the_counts(client, db):
    insert_in_one_statement(db, incident_rows(60))
    with db.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {SCHEMA}.incidents CASCADE")
    assert_list_totals_exact(client, db)


# --------------------------------------------------------------------------- folding the shards


def rows_by_shard(conn: sa.Connection) -> dict[int, int]:
    c = incident_counts.c
    return dict(conn.execute(sa.select(c.shard, sa.func.count()).group_by(c.shard)).all())


@postgresql_only
def test_folding_leaves_one_row_per_key_and_every_total_exact(app, client, db, create_incident):
    insert_in_one_statement(db, incident_rows(480))
    with db.begin() as conn:  # moves incidents between keys: some shards end at 0
        conn.execute(incidents.update().where(incidents.c.status == "open").values(status="resolved"))
    with db.connect() as conn:
        assert set(rows_by_shard(conn)) == set(range(8))
    [fold] = [job for job in app.extensions["background"].jobs() if job.name == "fold incident count shards"]
    assert fold.run() is True
    assert_list_totals_exact(client, db)
    with db.connect() as conn:
        assert rows_by_shard(conn) == {0: len(counted(conn))}
    create_incident(service="search", severity="low")  # writers spread over shards again
    assert_list_totals_exact(client, db)


@postgresql_only
def test_fold_gives_way_to_a_writer_holding_a_count_row(app, client, db):
    insert_in_one_statement(db, incident_rows(120))
    with db.connect() as writer, writer.begin():
        # An update not yet committed: the triggers hold the count rows it moved.
        writer.execute(incidents.update().where(incidents.c.incident_id == "inc-0000000000000007")
                       .values(status="resolved"))
        started = time.monotonic()
        assert counts.fold_shards(app.extensions["engine"]) is False
        assert time.monotonic() - started < 2
    assert_list_totals_exact(client, db)
    assert counts.fold_shards(app.extensions["engine"]) is True
    assert_list_totals_exact(client, db)


def open_incidents_gauge(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "open_incidents"]
    return {sample.labels["severity"]: sample.value for sample in family.samples}


def test_open_incidents_gauge_follows_sql_written_by_others(client, db):
    def unresolved_by_severity() -> dict[str, int]:
        totals = dict.fromkeys(SEVERITIES, 0)
        for (_, severity, status), n in assert_counts_exact(db).items():
            totals[severity] += n if status in UNRESOLVED else 0
        return totals

    insert_in_one_statement(db, incident_rows(240))
    assert open_incidents_gauge(client) == unresolved_by_severity() != dict.fromkeys(SEVERITIES, 0)
    with db.begin() as conn:
        conn.execute(incidents.update().where(incidents.c.service == "checkout").values(status="resolved"))
    assert open_incidents_gauge(client) == unresolved_by_severity()


# --------------------------------------------------------------------------- concurrency

THREADS = 8


def _through_the_api(app) -> Callable[[list[str], random.Random], None]:
    def transition(incident_ids: list[str], rng: random.Random) -> None:
        client = app.test_client()
        for incident_id in incident_ids:
            if rng.random() < 0.5:
                patch(client, incident_id, status="acknowledged")
            patch(client, incident_id, status="resolved")

    return transition


def _through_sql(engine: sa.Engine) -> Callable[[list[str], random.Random], None]:
    step = sa.cast(sa.case((incidents.c.status == "open", "acknowledged"), else_="resolved"), incidents.c.status.type)

    def transition(incident_ids: list[str], rng: random.Random) -> None:
        # Two passes (open → acknowledged → resolved), a few incidents of different counts per statement.
        for _ in range(2):
            rng.shuffle(incident_ids)
            for batch in (incident_ids[i:i + 3] for i in range(0, len(incident_ids), 3)):
                with engine.begin() as conn:
                    conn.execute(incidents.update().where(incidents.c.incident_id.in_(batch)).values(status=step))

    return transition


@postgresql_only
@pytest.mark.parametrize(("writer", "folding"), [("api", False), ("sql", False), ("api", True), ("sql", True)])
def test_concurrent_transitions_across_services_never_deadlock_and_stay_exact(make_app, db, writer, folding):
    """Writers alone, and writers while the shards are folded again and again (the fold gives way)."""
    app = make_app(db_pool_max=THREADS)
    transition = _through_the_api(app) if writer == "api" else _through_sql(db)
    rows = incident_rows(THREADS * 36)  # every thread has incidents of every (service, severity)
    insert_in_one_statement(db, [{**row, "status": "open"} for row in rows])
    mine = {t: [row["incident_id"] for row in rows[t * 36:(t + 1) * 36]] for t in range(THREADS)}
    barrier = threading.Barrier(THREADS + folding)
    writing = threading.Event()
    writing.set()
    folds: list[bool] = []

    def run(t: int) -> None:
        barrier.wait(timeout=30)
        transition(mine[t], random.Random(t))

    def fold_while_writing() -> None:
        barrier.wait(timeout=30)
        while writing.is_set():
            folds.append(counts.fold_shards(app.extensions["engine"]))

    with ThreadPoolExecutor(max_workers=THREADS + 1) as pool:
        folder = pool.submit(fold_while_writing) if folding else None
        try:
            for done in [pool.submit(run, t) for t in range(THREADS)]:
                done.result(timeout=120)  # re-raises a deadlock (or any failure) of a thread
        finally:
            writing.clear()  # or a failed writer would leave the folder, and the test, running forever
        if folder is not None:
            folder.result(timeout=30)
            assert True in folds
    assert_list_totals_exact(app.test_client(), db)
    with db.connect() as conn:
        assert counted(conn) == {(s, v, "resolved"): THREADS * 3 for s in SERVICES for v in SEVERITIES}


# --------------------------------------------------------------------------- migration 0003


@pytest.fixture
def fresh_url(backend, request, tmp_path) -> str:
    """An empty database of the test's backend, to migrate step by step."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("pg_database")()


def test_upgrade_to_0003_backfills_counts_of_existing_incidents(fresh_url):
    settings = Settings(database_url=fresh_url)
    migrate.upgrade(settings, "0002")
    engine = plain_engine(fresh_url)
    try:
        insert_in_one_statement(engine, incident_rows(240))
        with engine.begin() as conn:
            conn.execute(incidents.update().where(incidents.c.service == "search").values(status="resolved"))
        migrate.upgrade(settings)
        assert assert_counts_exact(engine)
        with engine.begin() as conn:  # and from then on the triggers keep them
            conn.execute(incidents.delete().where(incidents.c.severity == "low"))
        assert_counts_exact(engine)
    finally:
        engine.dispose()


def test_downgrade_to_0002_drops_the_counts_and_their_triggers(fresh_url):
    settings = Settings(database_url=fresh_url)
    migrate.upgrade(settings)
    engine = plain_engine(fresh_url)
    try:
        insert_in_one_statement(engine, incident_rows(60))
        command.downgrade(migrate.alembic_config(settings), "0002")
        with engine.begin() as conn:
            assert not sa.inspect(conn).has_table("incident_counts", schema=None if conn.dialect.name == "sqlite"
                                                   else SCHEMA)
            # Writes still work: no trigger is left behind to write to a table that is gone.
            conn.execute(incidents.insert().values(incident_rows(30, first=500)))
            conn.execute(incidents.update().values(status="resolved"))
            conn.execute(incidents.delete().where(incidents.c.severity == "low"))
            if conn.dialect.name == "postgresql":
                assert conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_proc WHERE proname = 'apply_incident_count_deltas'"
                ).scalar_one() == 0
        migrate.upgrade(settings)
        assert assert_counts_exact(engine)
    finally:
        engine.dispose()

"""Expensive analytics never starve the rest of the service: under real gunicorn on a seeded table, a
burst of cold analytics requests (each with a filter set of its own, reuse off) runs at most a quarter
of each worker's pool at once, and creates made meanwhile all answer 201."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import requests
import sqlalchemy as sa

from bench import seed
from tests.conftest import PG_ADMIN_URL
from tests.support.gunicorn import GunicornService

WORKERS = 2
POOL = 4  # a quarter of it: one analytics computation per worker at a time


@pytest.fixture
def seeded_database(postgres_available):
    url = seed.create_database(PG_ADMIN_URL)
    seed.migrate_and_seed(url, 100_000)  # enough that one computation takes a noticeable while
    yield url
    seed.drop_database(PG_ADMIN_URL, url)


@pytest.mark.slow
def test_cold_analytics_burst_leaves_creates_answering(seeded_database, tmp_path, oncall, notifier):
    service = GunicornService(
        {
            "DATABASE_URL": seeded_database,
            "ONCALL_SERVICE_URL": oncall.url,
            "NOTIFICATION_SERVICE_URL": notifier.url,
            "ANALYTICS_CACHE_SECONDS": "0",
            "DB_POOL_MAX": str(POOL),
            "DB_POOL_MIN": "1",
            "ESCALATION_TIMEOUT_MINUTES": "1000000",  # the seed's old open incidents stay as they are
        },
        workers=WORKERS,
        log_path=tmp_path / "service.log",
    ).start()
    # Autocommit: pg_stat_activity is read once per transaction, and each look must be fresh.
    watcher = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    database = sa.engine.make_url(seeded_database).database
    peak, watching, done = [0], threading.Event(), threading.Event()

    def watch() -> None:
        # Analytics statements the service is running right now, as PostgreSQL sees them (its own
        # parallel workers share the statement's text: client backends only; the background work's
        # grouped statements read other tables).
        with watcher.connect() as conn:
            while not done.is_set():
                running = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND state = 'active'"
                    " AND backend_type = 'client backend'"
                    " AND query ~ 'FROM incidents\\.incidents\\M' AND query ~ '(percentile_disc|GROUP BY)'"
                ), {"db": database}).scalar_one()
                watching.set()
                peak[0] = max(peak[0], running)
                time.sleep(0.01)

    now = datetime.now(UTC)

    def analytics(i: int) -> int:
        # Every incident, under a filter set no other request of the burst has.
        until = (now + timedelta(seconds=i + 1)).isoformat()
        url = f"{service.url}/api/v1/incidents/analytics"
        return requests.get(url, params={"until": until}, timeout=60).status_code

    def create(i: int) -> int:
        body = {"title": f"created during the burst {i}", "service": "svc-01", "severity": "high"}
        return requests.post(f"{service.url}/api/v1/incidents", json=body, timeout=30).status_code

    try:
        watcher_thread = threading.Thread(target=watch, daemon=True)
        watcher_thread.start()
        assert watching.wait(10)
        with ThreadPoolExecutor(32) as burst, ThreadPoolExecutor(4) as writers:
            answers = [burst.submit(analytics, i) for i in range(32)]
            time.sleep(0.2)  # the burst is in
            created = [writers.submit(create, i).result() for i in range(20)]
            statuses = [a.result() for a in answers]
        done.set()
        watcher_thread.join(5)
    finally:
        done.set()
        watcher.dispose()
        service.stop()

    assert created == [201] * 20
    # On a busy machine the last of the burst may find no turn within its wait: a 503 of its own,
    # never one of the creates'.
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 16, statuses
    assert 1 <= peak[0] <= WORKERS  # seen running, and never more than one per worker

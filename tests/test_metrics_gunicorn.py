"""/metrics under real gunicorn with 2 gevent workers on PostgreSQL: multiprocess sums, MTTA/MTTR
observed once per transition, custom buckets, and open_incidents read from the database."""

from __future__ import annotations

import re
import time
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from incident_app.lifecycle import SEVERITIES, STATUSES
from tests.support.gunicorn import GunicornService

SCRAPES = 6
MTTA_BUCKETS = "5,15,45,90,300"
MTTR_BUCKETS = "60,600,3600"
STALE_FILE = "counter_999999.db"

Sample = tuple[str, frozenset]


def scrape(url: str) -> tuple[str, dict[Sample, float]]:
    response = requests.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return response.text, samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def database_unresolved(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT severity::text, count(*) FROM incidents.incidents"
            " WHERE status IN ('open', 'acknowledged') GROUP BY severity"
        ).all()
    return {**dict.fromkeys(SEVERITIES, 0), **dict(rows)}


def scraped_open(samples: dict[Sample, float]) -> dict[str, float]:
    return {
        dict(labels)["severity"]: v for (name, labels), v in samples.items() if name == "open_incidents"
    }


def insert_behind_the_service(engine: sa.Engine, rows: list[tuple[str, str]]) -> None:
    """Rows as another replica or a migration would write them: plain SQL, no service involved."""
    with engine.begin() as conn:
        for severity, status in rows:
            conn.exec_driver_sql(
                "INSERT INTO incidents.incidents (id, incident_id, title, service, severity, status,"
                " created_at, updated_at) VALUES (gen_random_uuid(), 'inc-' || substr(md5(random()::text), 1, 16),"
                " 'behind the back', 'svc', %s, %s, now(), now())",
                (severity, status),
            )


@pytest.fixture(scope="module")
def multiproc_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("multiproc")
    (path / STALE_FILE).write_bytes(b"left by an earlier run")
    return path


@pytest.fixture(scope="module")
def pg_url(pg_database) -> str:
    return pg_database()


@pytest.fixture(scope="module")
def engine(pg_url) -> sa.Engine:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def service(pg_url, multiproc_dir, _session_peers, tmp_path_factory):
    oncall, notifier = _session_peers
    oncall.respond(200, {"primary": {"name": "Alice", "email": "alice@example.com"}})
    notifier.respond(200, {"status": "sent"})
    service = GunicornService(
        {
            "DATABASE_URL": pg_url,
            "ONCALL_SERVICE_URL": oncall.url,
            "NOTIFICATION_SERVICE_URL": notifier.url,
            "HTTP_CLIENT_TIMEOUT": "2",
            "MTTA_BUCKETS": MTTA_BUCKETS,
            "MTTR_BUCKETS": MTTR_BUCKETS,
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        },
        workers=2,
        log_path=tmp_path_factory.mktemp("gunicorn-metrics") / "service.log",
    ).start()
    yield service
    service.stop()


def create(url: str, severity: str) -> dict:
    response = requests.post(
        f"{url}/api/v1/incidents", json={"title": "Disk full", "service": "storage", "severity": severity}, timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()


def patch(url: str, incident_id: str, status: str) -> requests.Response:
    return requests.patch(f"{url}/api/v1/incidents/{incident_id}", json={"status": status}, timeout=10)


def test_stale_multiprocess_files_are_emptied_at_start(service, multiproc_dir):
    assert not (multiproc_dir / STALE_FILE).exists()


def expected_zero_series() -> set[Sample]:
    """Every series of the contract's table, as it must read before the first event."""
    series = set()
    for severity in SEVERITIES:
        for status in STATUSES:
            series.add(("incidents_total", frozenset({"status": status, "severity": severity}.items())))
        for name in ("incident_mtta_seconds_count", "incident_mttr_seconds_count", "incident_escalations_total"):
            series.add((name, frozenset({"severity": severity}.items())))
    for status in ("sent", "failed"):
        series.add(("oncall_notifications_sent_total", frozenset({"channel": "mock", "status": status}.items())))
    return series


def test_every_series_exists_at_zero_from_the_first_scrape_of_every_worker(service, multiproc_dir):
    # Runs before any event of this module: each worker pre-creates its series, and the zeros of
    # both workers' files sum to one series at 0, never to two.
    for _ in range(SCRAPES):
        _, samples = scrape(service.url)
        present = {key: v for key, v in samples.items() if key in expected_zero_series()}
        assert present == dict.fromkeys(expected_zero_series(), 0.0)
        for severity in SEVERITIES:
            for le in (*(f"{float(b)}" for b in MTTA_BUCKETS.split(",")), "+Inf"):
                bucket = ("incident_mtta_seconds_bucket", frozenset({"severity": severity, "le": le}.items()))
                assert samples[bucket] == 0
    assert len({f.name for f in multiproc_dir.glob("counter_*.db")}) >= 2


def test_creates_raise_incidents_total_by_n_in_every_scrape(service, multiproc_dir):
    before = {value(scrape(service.url)[1], "incidents_total", status="open", severity="high") for _ in range(SCRAPES)}
    assert len(before) == 1
    n = 12
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: create(service.url, "high"), range(n)))
    after = [value(scrape(service.url)[1], "incidents_total", status="open", severity="high") for _ in range(SCRAPES)]
    assert after == [before.pop() + n] * SCRAPES

    # The sums are only worth something if both workers took part: each writes its own files.
    deadline = time.monotonic() + 20
    while len({f.name for f in multiproc_dir.glob("counter_*.db")}) < 2 and time.monotonic() < deadline:
        requests.get(f"{service.url}/health/live", timeout=5)
    assert len({f.name for f in multiproc_dir.glob("counter_*.db")}) >= 2


def test_backdated_acknowledge_lands_in_its_mtta_bucket(service, engine):
    incident = create(service.url, "medium")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE incidents.incidents SET created_at = now() - interval '100 seconds' WHERE incident_id = %s",
            (incident["incident_id"],),
        )
    _, before = scrape(service.url)
    assert patch(service.url, incident["incident_id"], "acknowledged").status_code == 200
    for _ in range(SCRAPES):
        _, after = scrape(service.url)

        def delta(le: str, after=after) -> float:
            name = "incident_mtta_seconds_bucket"
            return value(after, name, le=le, severity="medium") - value(before, name, le=le, severity="medium")

        assert [delta(le) for le in ("5.0", "15.0", "45.0", "90.0", "300.0", "+Inf")] == [0, 0, 0, 0, 1, 1]
        added = value(after, "incident_mtta_seconds_sum", severity="medium") - value(
            before, "incident_mtta_seconds_sum", severity="medium"
        )
        assert 100 <= added < 130


def test_bucket_variables_are_the_le_values(service):
    incident = create(service.url, "critical")
    assert patch(service.url, incident["incident_id"], "acknowledged").status_code == 200
    assert patch(service.url, incident["incident_id"], "resolved").status_code == 200
    _, samples = scrape(service.url)

    def le_values(name: str) -> set[str]:
        return {dict(labels)["le"] for (n, labels), _ in samples.items() if n == name}

    assert le_values("incident_mtta_seconds_bucket") == {*(f"{float(b)}" for b in MTTA_BUCKETS.split(",")), "+Inf"}
    assert le_values("incident_mttr_seconds_bucket") == {*(f"{float(b)}" for b in MTTR_BUCKETS.split(",")), "+Inf"}


def test_fifty_concurrent_acknowledges_observe_mtta_once(service):
    incident = create(service.url, "low")
    _, before = scrape(service.url)
    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(lambda _: patch(service.url, incident["incident_id"], "acknowledged"), range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert len({r.json()["acknowledged_at"] for r in responses}) == 1
    for _ in range(SCRAPES):
        _, after = scrape(service.url)
        for name, labels in (
            ("incident_mtta_seconds_count", {"severity": "low"}),
            ("incidents_total", {"status": "acknowledged", "severity": "low"}),
        ):
            assert value(after, name, **labels) - value(before, name, **labels) == 1, name


def test_open_incidents_equals_the_database_count_with_rows_written_behind_its_back(service, engine):
    create(service.url, "critical")
    insert_behind_the_service(
        engine, [("critical", "open"), ("high", "acknowledged"), ("low", "resolved"), ("medium", "open")] * 3
    )
    for _ in range(SCRAPES):
        _, samples = scrape(service.url)
        assert scraped_open(samples) == database_unresolved(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE incidents.incidents SET status = 'resolved', resolved_at = now()"
                             " WHERE severity = 'medium'")
    for _ in range(SCRAPES):
        _, samples = scrape(service.url)
        counts = scraped_open(samples)
        assert counts == database_unresolved(engine)
        assert set(counts) == set(SEVERITIES) and counts["medium"] == 0


def test_no_sample_twice_and_no_incident_id_in_any_label(service):
    incident = create(service.url, "high")
    requests.get(f"{service.url}/api/v1/incidents/{incident['incident_id']}", timeout=5)
    requests.get(f"{service.url}/api/v1/incidents/inc-0123456789abcdef", timeout=5)
    patch(service.url, incident["incident_id"], "resolved")
    for _ in range(SCRAPES):
        text, _ = scrape(service.url)
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        series = Tally(line.rsplit(" ", 1)[0] for line in lines)
        assert [s for s, count in series.items() if count > 1] == []
        assert not re.search(r"inc-[0-9a-f]{16}", text)
        assert incident["id"] not in text
        assert 'route="/api/v1/incidents/<string:incident_id>"' in text


def test_open_incidents_is_true_after_a_restart(service, engine):
    service.stop()
    insert_behind_the_service(engine, [("high", "open"), ("critical", "acknowledged"), ("low", "open")])
    service.start()
    for _ in range(SCRAPES):
        _, samples = scrape(service.url)
        assert scraped_open(samples) == database_unresolved(engine)
        assert sum(scraped_open(samples).values()) > 0

"""The load benchmark's own parts: the seeded mix, the id pools, wrk's summary, and one tiny
end-to-end run (slow: it starts gunicorn twice and drives wrk)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from bench import cpu, explain, run, seed
from tests.conftest import PG_ADMIN_URL


@pytest.fixture
def bench_database(postgres_available):
    url = seed.create_database(PG_ADMIN_URL)
    yield url
    seed.drop_database(PG_ADMIN_URL, url)


def test_seed_gives_the_realistic_mix(bench_database):
    seed.migrate_and_seed(bench_database, 4000, batch=1500)  # several batches
    engine = sa.create_engine(bench_database)
    with engine.connect() as conn:
        q = lambda sql: conn.exec_driver_sql(sql).one()  # noqa: E731
        total, services, severities, unresolved = q(
            "SELECT count(*), count(DISTINCT service), count(DISTINCT severity),"
            " count(*) FILTER (WHERE status <> 'resolved') FROM incidents.incidents"
        )
        inconsistent = q(
            "SELECT count(*) FROM incidents.incidents WHERE acknowledged_at < created_at"
            " OR resolved_at < coalesce(acknowledged_at, created_at) OR greatest(acknowledged_at, resolved_at) > now()"
            " OR (status = 'resolved') <> (resolved_at IS NOT NULL)"
            " OR (status = 'acknowledged' AND acknowledged_at IS NULL) OR updated_at < created_at"
        )[0]
        mtta_min, mtta_max = q(
            "SELECT min(acknowledged_at - created_at), max(acknowledged_at - created_at) FROM incidents.incidents"
        )
        with_notes, with_alerts = q(
            "SELECT count(*) FILTER (WHERE jsonb_array_length(notes) > 0),"
            " (SELECT count(DISTINCT incident_id) FROM incidents.incident_alerts) FROM incidents.incidents"
        )
    engine.dispose()

    assert total == 4000
    assert 40 <= services <= 50
    assert severities == 4
    assert 0.06 * total < unresolved < 0.14 * total
    assert inconsistent == 0
    assert mtta_min.total_seconds() < 5 * 60 and mtta_max.total_seconds() > 60 * 60  # minutes to hours
    assert 0.1 * total < with_notes < 0.3 * total
    assert 0.2 * total < with_alerts < 0.5 * total


def test_provisioned_incidents_are_open_and_distinct(bench_database):
    seed.migrate_and_seed(bench_database, 100)
    ids = seed.provision_open_incidents(bench_database, 500)
    assert len(set(ids)) == len(ids) >= 495  # a rare id clash is skipped, not fatal
    assert seed.count_open(bench_database, ids) == len(ids)


def test_the_ceiling_table_is_bare_and_as_large_as_the_services(bench_database):
    seed.migrate_and_seed(bench_database, 500)
    seed.seed_ceiling(bench_database)
    engine = sa.create_engine(bench_database)
    with engine.connect() as conn:
        q = lambda sql: conn.exec_driver_sql(sql).scalar_one()  # noqa: E731
        triggers = q("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'bench_ceiling.incidents'::regclass")
        indexes = q("SELECT count(*) FROM pg_indexes WHERE schemaname = 'bench_ceiling'")
        tables = q("SELECT count(*) FROM pg_tables WHERE schemaname = 'bench_ceiling'")
        copied = q("SELECT count(*) FROM bench_ceiling.incidents")
        service_side = q("SELECT count(*) FROM incidents.incidents")
    engine.dispose()
    assert (triggers, indexes, tables) == (0, 2, 1)  # its primary key and the unique incident_id, nothing else
    assert copied == service_side == 500


def test_explain_shows_the_plans_the_service_runs(bench_database):
    seed.migrate_and_seed(bench_database, 2000)
    report = explain.explain_report(bench_database, 2000, datetime.now(UTC))
    sections = report.split("\n## ")[1:]
    assert [s.split("\n", 1)[0] for s in sections] == [
        "list, no filter", "list, status=open", "list, severity=high", "list, service=svc-10", "list, offset=1000",
        "analytics, no filter", "analytics, last 30 days", "analytics, service=svc-05, last 30 days"]
    for section in sections:
        assert "Execution Time" in section, section
    # Lists run prepared: explained as EXECUTE under the SQL of their PREPARE, newest first from an index.
    for section in sections[:5]:
        assert "PREPARE incident_" in section and "\nEXECUTE incident_" in section
        assert "Index Scan" in section and "Sort  " not in section.split("Limit", 1)[1]
    # Analytics never read the whole table: counts and sums from the day rows (with a window, the
    # partial first day from its range of the window index); with no filter each percentile's ranks
    # from a duration's index; with a window alone the buckets' sizes from their day rows and the
    # durations of the buckets holding the ranks from the bucket indexes; with a service as well
    # its durations from the window index, sorted.
    for section in sections[5:]:
        assert "Seq Scan on incidents" not in section
        assert "on incident_days" in section
    assert "ix_incidents_mtta_seconds" in sections[5] and "ix_incidents_mttr_seconds" in sections[5]
    assert "ix_incidents_analytics_window" not in sections[5] and "percentile" not in sections[5]
    assert "on incident_duration_buckets" in sections[6]
    assert "Index Only Scan using ix_incidents_mtta_bucket" in sections[6]
    assert "Index Only Scan using ix_incidents_mttr_bucket" in sections[6]
    assert "incident_duration_buckets" not in sections[7] and "_bucket" not in sections[7]
    for section in sections[6:]:
        assert "Index Only Scan using ix_incidents_analytics_window" in section
        assert "percentile_disc" in section and "percentile_cont" not in section


def test_cpu_per_request_counts_the_backends_of_its_own_database(bench_database, pg_database):
    busy = "SELECT count(*) FROM generate_series(1, 2000000)"
    mine, other = sa.create_engine(bench_database), sa.create_engine(pg_database())
    try:
        with mine.connect() as on_mine, other.connect() as on_other:
            backends = cpu.backends(bench_database)
            assert len(backends) == 1
            meter = cpu.CpuMeter({"postgres": backends})
            on_other.exec_driver_sql(busy)
            assert meter.per_request_ms(1) == {"postgres": 0.0}, "another database's backend does not count"
            on_mine.exec_driver_sql(busy)
            assert meter.per_request_ms(10)["postgres"] > 1  # ms per "request": 2,000,000 rows in ten
    finally:
        mine.dispose()
        other.dispose()


def test_the_sql_of_an_experiment_runs_on_the_database(bench_database):
    seed.migrate_and_seed(bench_database, 10)
    seed.run_sql(bench_database, "DROP TRIGGER incident_events_enqueue_webhooks ON incidents.incident_events;"
                                 " DROP TRIGGER incident_events_notify_feed ON incidents.incident_events")
    engine = sa.create_engine(bench_database)
    try:
        with engine.connect() as conn:
            left = conn.exec_driver_sql("SELECT count(*) FROM pg_trigger WHERE tgrelid ="
                                        " 'incidents.incident_events'::regclass AND NOT tgisinternal").scalar_one()
    finally:
        engine.dispose()
    assert left == 0


def test_wrk_summary_line_is_read_into_figures():
    stdout = (
        "Running 15s test @ http://127.0.0.1:1/\n"
        'BENCH_RESULT {"requests": 3000, "duration_us": 1500000, "p50_us": 2500, "p90_us": 4000, '
        '"p99_us": 12000, "max_us": 30000, "errors": {"connect": 0, "read": 1, "write": 0, "status": 2, '
        '"timeout": 0}}\n'
    )
    figures = run.parse_wrk_output(stdout)
    assert figures["rps"] == 2000.0
    assert (figures["p50_ms"], figures["p99_ms"]) == (2.5, 12.0)
    assert figures["errors"] == 3 and figures["error_kinds"] == {"read": 1, "status": 2}


def test_wrk_without_a_summary_is_an_error():
    with pytest.raises(RuntimeError, match="no result"):
        run.parse_wrk_output("unable to connect\n")


def test_targets_are_judged_against_the_ceiling():
    by_name = {s.name: s for s in run.scenarios(100_000, run.datetime.now(run.UTC))}
    ceilings = {"ceiling_select": {"rps": 1000.0}}
    fast = {"rps": 800.0, "p50_ms": 5.0, "p99_ms": 20.0, "errors": 0}
    slow = {"rps": 700.0, "p50_ms": 5.0, "p99_ms": 20.0, "errors": 0}
    run.judge(by_name["get_one"], fast, ceilings, 100_000)
    run.judge(by_name["get_one"], slow, ceilings, 100_000)
    assert (fast["ratio"], fast["met"]) == (0.8, True)
    assert (slow["ratio"], slow["met"]) == (0.7, False)
    # The ceiling measured right before each run: its median is the scenario's ceiling, and the
    # ratio is the scenario's median over it (what the table and the chart show side by side).
    drifting = {"rps": 700.0, "p50_ms": 5.0, "p99_ms": 20.0, "errors": 0, "runs": [
        {"rps": 700.0, "ceiling_rps": 900.0}, {"rps": 600.0, "ceiling_rps": 1000.0},
        {"rps": 800.0, "ceiling_rps": 1100.0},
    ]}
    run.judge(by_name["get_one"], drifting, ceilings, 100_000)
    assert (drifting["ceiling_rps"], drifting["ratio"], drifting["met"]) == (1000.0, 0.7, False)
    assert fast["ceiling_rps"] == 1000.0  # no run of its own: the ceiling scenario's median
    analytics = {"rps": 10.0, "p50_ms": 900.0, "p99_ms": 2000.0, "errors": 0}
    run.judge(by_name["analytics_all"], analytics, ceilings, 100_000)
    assert analytics["met"] is None  # its target is set at 1,000,000 rows
    # The cold analytics: a latency bound at one connection, a rate at 32, both at a million rows.
    for name, figures, met in (
        ("analytics_cold_all", {"rps": 4.0, "p50_ms": 250.0}, True),
        ("analytics_cold_all", {"rps": 3.0, "p50_ms": 310.0}, False),
        ("analytics_cold_since", {"rps": 8.0, "p50_ms": 120.0}, True),
        ("analytics_cold_since_32", {"rps": 24.0, "p50_ms": 1200.0}, True),
        ("analytics_cold_since_32", {"rps": 19.0, "p50_ms": 1500.0}, False),
    ):
        result = {**figures, "p99_ms": 2000.0, "errors": 0}
        run.judge(by_name[name], result, ceilings, 1_000_000)
        assert result["met"] is met, (name, result)
    assert by_name["analytics_cold_since_32"].connections == 32 and by_name["analytics_cold_since"].connections == 1


@pytest.mark.parametrize("incidents, pages, met", [(20, 20, True), (21, 21, False), (20, 23, False)])
def test_the_storm_is_judged_by_its_speed_against_creates_and_by_one_incident_and_page_per_key(incidents, pages,
                                                                                                met):
    storm = {s.name: s for s in run.scenarios(100_000, run.datetime.now(run.UTC))}["storm"]
    result = {"rps": 500.0, "p50_ms": 20.0, "p99_ms": 80.0, "errors": 0}
    run.judge(storm, result, {"create": {"rps": 400.0}}, 100_000)
    run.judge_storm(result, incidents, pages)
    assert result["ratio"] == 1.25
    assert result["met"] is met
    assert f"{incidents} incidents and {pages} pages" in result["note"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/run installs it)")
def test_a_tiny_run_writes_results_with_no_errors(postgres_available, tmp_path):
    pytest.importorskip("matplotlib", reason="pip install -r bench/requirements.txt for the benchmark's tools")
    code = run.main(["--rows", "2000", "--duration", "1", "--runs", "1", "--warmup", "1",
                     "--scenarios", "get_one,list_status,metrics,analytics_cold_since", "--name", "tiny",
                     "--out", str(tmp_path),
                     "--admin-url", PG_ADMIN_URL])
    assert code == 0
    document = json.loads((tmp_path / "tiny.json").read_text())
    measured = {s["name"]: s for s in document["scenarios"] if "skipped" not in s}
    assert {"ceiling_select", "ceiling_insert", "get_one", "list_status", "analytics_cold_since"} <= set(measured)
    for scenario in measured.values():
        assert scenario["runs"][0]["requests"] > 0
        assert scenario["errors"] == 0, scenario
    assert "ratio" in measured["get_one"]
    assert all(r["ceiling_rps"] > 0 for r in measured["get_one"]["runs"])  # measured again before each run
    get_one = measured["get_one"]
    assert get_one["ratio"] == round(get_one["rps"] / get_one["ceiling_rps"], 3)
    assert (tmp_path / "tiny.md").read_text().count("\n|") >= 5
    assert get_one["cpu_ms_per_request"]["workers"] > 0 and get_one["cpu_ms_per_request"]["postgres"] > 0
    assert (tmp_path / "tiny.png").read_bytes().startswith(b"\x89PNG")

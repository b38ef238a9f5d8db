"""CPU per request of an alert storm, by process group: what a grouped create costs the service's
workers and PostgreSQL, on a machine where other work makes req/s a poor measure.

    python bench/storm_cpu.py                       # create, then 4 storm runs of 10 s
    python bench/storm_cpu.py --alerts 300 --runs 2 # storm incidents holding 300 alerts from the start

The storm's incidents gain about one alert every two requests of their key, and every grouped answer
carries them all: consecutive runs show how the cost grows with the alerts (`alerts` is the mean per
storm incident at the end of each run), and `--alerts` opens the storm's incidents with that many
first (bench/run.py's 100,000-row run ends near 360). PostgreSQL is counted as the backends connected to this run's
database alone, so other databases' work on the same server is left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench import cpu, seed  # noqa: E402
from bench.run import (  # noqa: E402
    ADMIN_URL,
    STORM_KEYS,
    Process,
    Scenario,
    ensure_wrk,
    run_wrk,
    start_service,
    wrk_script,
)

SCENARIOS = {
    "create": Scenario("create", "POST a new incident", "/api/v1/incidents", "create.lua"),
    "storm": Scenario("storm", "POST over 20 dedup keys", "/api/v1/incidents", "storm.lua"),
}


def preload(target: str, alerts: int) -> None:
    """Open each storm key's incident, as storm.lua would, with `alerts` alerts (100 a request)."""
    severities = ("critical", "high", "medium", "low")  # common.lua's SEVERITIES, in its order
    for n in range(STORM_KEYS):
        for start in range(0, alerts, 100):
            body = {"title": f"Dependency down behind storm-{n:02d}", "service": f"storm-svc-{n:02d}",
                    "severity": severities[n % len(severities)], "dedup_key": f"storm-{n:02d}",
                    "alert_ids": [str(uuid.uuid4()) for _ in range(min(100, alerts - start))]}
            requests.post(f"{target}/api/v1/incidents", json=body, timeout=30).raise_for_status()


def mean_storm_alerts(engine: sa.Engine) -> float:
    with engine.connect() as conn:
        return float(conn.execute(sa.text(
            "SELECT coalesce(avg(n), 0) FROM (SELECT count(a.alert_id) AS n FROM incidents.incidents i"
            " LEFT JOIN incidents.incident_alerts a ON a.incident_id = i.id"
            " WHERE i.dedup_key IS NOT NULL GROUP BY i.id) AS per_incident")).scalar_one())


def measure(wrk: str, target: str, script: Path, groups: dict[str, list[psutil.Process]],
            args: argparse.Namespace) -> dict:
    meter = cpu.CpuMeter(groups)
    result = run_wrk(wrk, target, script, threads=2, connections=args.connections, duration=args.duration)
    return {"rps": result["rps"], "p99_ms": result["p99_ms"], "errors": result["errors"],
            "cpu_ms_per_request": meter.per_request_ms(result["requests"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=4, help="consecutive storm runs (default 4)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--alerts", type=int, default=0, help="alerts each storm incident starts with (default 0)")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args(argv)

    wrk = ensure_wrk()
    work_dir = Path(tempfile.mkdtemp(prefix="incident-storm-cpu-"))
    url = seed.create_database(args.admin_url)
    engine = sa.create_engine(url)
    processes: list[Process] = []
    try:
        seed.migrate_and_seed(url, args.rows)
        service, port = start_service(url, work_dir, args.connections, processes)
        target = f"http://127.0.0.1:{port}"

        def script(name: str, run: int) -> Path:
            # A seed per run, as bench/run.py's: each run's storm brings alerts of its own.
            settings = {"threads": 2, "seed": 1000 * run + 7, "path": SCENARIOS[name].path, "storm_keys": STORM_KEYS}
            return wrk_script(SCENARIOS[name], work_dir, settings)

        run_wrk(wrk, target, script("create", 0), threads=2, connections=args.connections, duration=3)  # warm-up
        preload(target, args.alerts)
        groups = {"workers": service.workers(), "postgres": cpu.backends(url)}
        results = [{"scenario": "create", **measure(wrk, target, script("create", 1), groups, args)}]
        for index in range(1, args.runs + 1):
            run = measure(wrk, target, script("storm", index), groups, args)
            results.append({"scenario": "storm", **run, "alerts": round(mean_storm_alerts(engine), 1)})
        for line in results:
            print(json.dumps(line), flush=True)
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        engine.dispose()
        seed.drop_database(args.admin_url, url)


if __name__ == "__main__":
    sys.exit(main())

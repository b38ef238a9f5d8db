"""Load benchmark: the service under production settings against the ceiling of its stack.

    python bench/run.py                      # 100,000 rows, every scenario, 3 runs of 15 s
    python bench/run.py --rows 1000000 --scenarios analytics_all
    python bench/run.py --rows 20000 --duration 3 --runs 1 --warmup 1   # a quick iteration

One run: a fresh PostgreSQL database, migrated by the service's own migrations and seeded in SQL;
fake On-Call/Notification peers (gevent, own process); the service under
`gunicorn -c gunicorn.conf.py wsgi:app` with WEB_CONCURRENCY=2; the ceiling app (bench/ceiling.py)
under the same configuration; wrk (2 threads, 32 connections) per scenario: a warm-up, then
`--runs` runs whose median is reported. Results go to bench/results/<name>.{json,md,png}; the
database is dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402

from bench import cpu, report, seed  # noqa: E402

LUA = ROOT / "bench" / "lua"
RESULTS = ROOT / "bench" / "results"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SAMPLED_IDS = 20_000
WRK_TIMEOUT = "10s"
STORM_KEYS = 20  # the storm scenario's dedup keys: it must end with as many incidents and pages


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    path: str  # the URL path (with query), or the prefix an id is appended to
    script: str = "static.lua"
    app: str = "service"  # "ceiling", or "service_cold": the service with analytics reuse off
    ids: str | None = None  # "sample": existing incidents; "open": fresh open ones per run
    connections: int | None = None  # wrk's connections (and at most as many threads); None: --connections
    since_days: int | None = None  # fresh_since.lua: `since` is now − this many days, new every request
    # Targets: a ratio to a ceiling scenario, latency bounds, and the row count they apply from.
    ceiling: str | None = None
    min_ratio: float | None = None
    max_p50_ms: float | None = None
    max_p99_ms: float | None = None
    min_rps: float | None = None
    target_rows: int = 0

    @property
    def has_target(self) -> bool:
        return any(t is not None for t in (self.min_ratio, self.max_p50_ms, self.max_p99_ms, self.min_rps))


def scenarios(rows: int, now: datetime) -> list[Scenario]:
    since = (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    until = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    deep = min(10_000, rows // 2)
    api = "/api/v1/incidents"
    list_target = {"ceiling": "ceiling_select", "min_ratio": 0.5, "max_p99_ms": 100.0}
    return [
        Scenario("ceiling_select", "ceiling: one SELECT by key", "/ceiling/incidents/", "by_id.lua", "ceiling",
                 "sample"),
        Scenario("ceiling_insert", "ceiling: one INSERT … RETURNING", "/ceiling/incidents", "create.lua", "ceiling"),
        Scenario("get_one", "GET one incident (random ids)", f"{api}/", "by_id.lua", ids="sample",
                 ceiling="ceiling_select", min_ratio=0.75),
        Scenario("list_all", "list limit=50, no filter", f"{api}?limit=50", **list_target),
        Scenario("list_status", "list limit=50, status=open", f"{api}?limit=50&status=open", **list_target),
        Scenario("list_severity", "list limit=50, severity=high", f"{api}?limit=50&severity=high", **list_target),
        Scenario("list_service", "list limit=50, service=svc-10", f"{api}?limit=50&service=svc-10", **list_target),
        Scenario("list_deep_offset", f"list limit=50, offset={deep}", f"{api}?limit=50&offset={deep}",
                 ceiling="ceiling_select"),
        Scenario("analytics_all", "analytics, no filter", f"{api}/analytics", ceiling="ceiling_select",
                 max_p50_ms=300.0, target_rows=1_000_000),
        Scenario("analytics_filtered", "analytics, service + 30-day window",
                 f"{api}/analytics?service=svc-05&since={since}&until={until}", ceiling="ceiling_select"),
        # Every request new, reuse off (ANALYTICS_CACHE_SECONDS=0): what one computation costs.
        Scenario("analytics_cold_all", "analytics, no filter, reuse off, 1 connection", f"{api}/analytics",
                 app="service_cold", connections=1, max_p50_ms=300.0, target_rows=1_000_000),
        Scenario("analytics_cold_since", "analytics, since = now − 30 days (new each request), reuse off, "
                 "1 connection", f"{api}/analytics", "fresh_since.lua", "service_cold", connections=1,
                 since_days=30, max_p50_ms=150.0, target_rows=1_000_000),
        Scenario("analytics_cold_since_32", "analytics, since = now − 30 days (new each request), reuse off, "
                 "32 connections", f"{api}/analytics", "fresh_since.lua", "service_cold", connections=32,
                 since_days=30, min_rps=20.0, target_rows=1_000_000),
        Scenario("create", "POST create (On-Call + Notification)", api, "create.lua",
                 ceiling="ceiling_insert", min_ratio=0.35),
        Scenario("storm", f"POST create, alert storm over {STORM_KEYS} dedup keys (grouped)", api, "storm.lua",
                 ceiling="create", min_ratio=1.0, max_p99_ms=100.0),
        Scenario("note", "PATCH note append", f"{api}/", "note.lua", ids="sample", ceiling="ceiling_insert"),
        Scenario("acknowledge", "PATCH acknowledge (a new open incident each)", f"{api}/", "acknowledge.lua",
                 ids="open", ceiling="ceiling_insert", min_ratio=0.5),
        Scenario("metrics", "GET /metrics", "/metrics", ceiling="ceiling_select"),
        Scenario("health_ready", "GET /health/ready", "/health/ready", ceiling="ceiling_select"),
    ]


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    """A port that nothing listens on, for a server about to start on every interface.

    Chosen below the kernel's ephemeral range: a port that bind(0) handed out and this closed is
    the next local port of any outgoing connection meanwhile (a pool's, a proxy's), and gunicorn,
    finding it in use, retries for 5 s and exits."""
    first_ephemeral = _first_ephemeral_port()
    for _ in range(200):
        port = random.randrange(10_000, first_ephemeral) if first_ephemeral > 10_001 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port below the ephemeral range")


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


class Process:
    """A child in its own session, so that stopping it stops everything it started."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)

    def wait_until_answers(self, url: str, ok: tuple[int, ...] = (200,), timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
            try:
                if requests.get(url, timeout=1).status_code in ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout} s; see {self.log_path}")

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children()
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def gunicorn(name: str, app: str, port: int, env: dict[str, str], log_dir: Path, *extra: str) -> Process:
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *extra, app]
    return Process(name, argv, {**env, "SERVICE_PORT": str(port)}, log_dir)


def start_service(url: str, work_dir: Path, connections: int, processes: list[Process]) -> tuple[Process, int]:
    """The fast fake peers and the 2-worker service on `url`, both answering; appended to `processes`
    (to be stopped by the caller). Returns the service and its port."""
    peers_port, port = free_port(), free_port()
    peers_url = f"http://127.0.0.1:{peers_port}"
    env = {**os.environ, "DATABASE_URL": url, "WEB_CONCURRENCY": "2", "ENVIRONMENT": "benchmark",
           "DB_POOL_MAX": str(-(-connections // 2)), "DB_POOL_MIN": str(-(-connections // 2)),
           "ESCALATION_TIMEOUT_MINUTES": "1000000", "ONCALL_SERVICE_URL": peers_url,
           "NOTIFICATION_SERVICE_URL": peers_url}
    peers = Process("peers", [sys.executable, str(ROOT / "bench" / "peers.py"), "--port", str(peers_port)],
                    env, work_dir)
    processes.append(peers)
    service = gunicorn("service", "wsgi:app", port, env, work_dir)
    processes.append(service)
    peers.wait_until_answers(f"{peers_url}/api/v1/oncall/current?team=x")
    service.wait_until_answers(f"http://127.0.0.1:{port}/health/ready")
    return service, port


def worker_rss_mib(process: Process) -> list[float]:
    sizes = []
    for worker in process.workers():
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes.append(round(worker.memory_info().rss / 2**20, 1))
    return sorted(sizes)


# ----------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing: installing the Debian package", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def wrk_script(scenario: Scenario, work_dir: Path, settings: dict[str, Any]) -> Path:
    """common.lua and the scenario's script, behind a BENCH table of this run's settings."""
    fields = ", ".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    text = f"BENCH = {{{fields}}}\n" + (LUA / "common.lua").read_text() + (LUA / scenario.script).read_text()
    path = work_dir / f"{scenario.name}.lua"
    path.write_text(text)
    return path


def run_wrk(wrk: str, url: str, script: Path, *, threads: int, connections: int, duration: float) -> dict[str, Any]:
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s",
            "--timeout", WRK_TIMEOUT, "-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    return parse_wrk_output(done.stdout, done.stderr)


def parse_wrk_output(stdout: str, stderr: str = "") -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            raw = json.loads(line.removeprefix("BENCH_RESULT "))
            seconds = raw["duration_us"] / 1e6
            return {
                "requests": int(raw["requests"]),
                "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
                "p50_ms": raw["p50_us"] / 1000,
                "p90_ms": raw["p90_us"] / 1000,
                "p99_ms": raw["p99_us"] / 1000,
                "max_ms": raw["max_us"] / 1000,
                "errors": sum(raw["errors"].values()),
                "error_kinds": {k: int(v) for k, v in raw["errors"].items() if v},
            }
    raise RuntimeError(f"wrk printed no result:\n{stdout}\n{stderr}")


# ----------------------------------------------------------------------------- profiling


def profile_workers(process: Process, out_dir: Path, name: str, seconds: float) -> list[subprocess.Popen]:
    """py-spy on every worker while a run goes on; collapsed stacks, summarised by report.py."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    for worker in process.workers():
        argv = ["py-spy", "record", "--pid", str(worker.pid), "--duration", str(int(seconds)), "--rate", "200",
                "--format", "raw", "--nonblocking", "-o", str(out_dir / f"{name}-{worker.pid}.txt")]
        spies.append(subprocess.Popen([str(Path(sys.executable).parent / argv[0]), *argv[1:]],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


# ----------------------------------------------------------------------------- the run


def summarise(scenario: Scenario, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "cpu_ms_per_request": {name: statistics.median(r["cpu_ms_per_request"][name] for r in runs)
                               for name in runs[0].get("cpu_ms_per_request", {})},
    }


def judge(scenario: Scenario, result: dict[str, Any], ceilings: dict[str, dict[str, Any]], rows: int) -> None:
    """Adds the ceiling it is compared with, the ratio to it and, where the issue sets one, whether
    the target is met.

    With the ceiling measured again before each run, the scenario's ceiling is the median of those
    measurements; otherwise the ceiling scenario's own median. The ratio is always the scenario's
    median req/s over that ceiling, so that a reader checks it from the two figures shown beside it.
    """
    moments = [run["ceiling_rps"] for run in result.get("runs", []) if run.get("ceiling_rps")]
    ceiling = ceilings.get(scenario.ceiling or "")
    if moments:
        result["ceiling_rps"] = statistics.median(moments)
    elif ceiling and ceiling.get("rps"):
        result["ceiling_rps"] = ceiling["rps"]
    if result.get("ceiling_rps"):
        result["ratio"] = round(result["rps"] / result["ceiling_rps"], 3)
    checks, misses = [], []
    if scenario.min_ratio is not None and "ratio" in result:
        checks.append(f"≥ {scenario.min_ratio:.0%} of {scenario.ceiling}")
        if result["ratio"] < scenario.min_ratio:
            misses.append("ratio")
    if scenario.max_p50_ms is not None:
        checks.append(f"p50 < {scenario.max_p50_ms:g} ms" + (f" at {scenario.target_rows:,} rows"
                                                               if scenario.target_rows else ""))
        if result["p50_ms"] >= scenario.max_p50_ms:
            misses.append("p50")
    if scenario.max_p99_ms is not None:
        checks.append(f"p99 < {scenario.max_p99_ms:g} ms")
        if result["p99_ms"] >= scenario.max_p99_ms:
            misses.append("p99")
    if scenario.min_rps is not None:
        checks.append(f"≥ {scenario.min_rps:g} req/s" + (f" at {scenario.target_rows:,} rows"
                                                         if scenario.target_rows else ""))
        if result["rps"] < scenario.min_rps:
            misses.append("req/s")
    checks.append("0 errors")
    if result["errors"]:
        misses.append("errors")
    result["target"] = ", ".join(checks)
    if rows < scenario.target_rows:
        result["met"] = None  # the target is defined at a larger table
    else:
        result["met"] = not misses


def judge_storm(result: dict[str, Any], incidents: int, pages: int) -> None:
    """The storm's promise beside its speed: however many requests, one incident and one page per key."""
    result["note"] = f"{incidents} incidents and {pages} pages for {STORM_KEYS} dedup keys"
    result["target"] += f", {STORM_KEYS} incidents and pages"
    if (incidents, pages) != (STORM_KEYS, STORM_KEYS):
        result["met"] = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="incidents seeded (default 100,000)")
    parser.add_argument("--duration", type=float, default=15, help="seconds per measured run (default 15)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per scenario (default 3)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up per scenario (default 5)")
    parser.add_argument("--ceiling-duration", type=float, default=5,
                        help="seconds of the ceiling run before each measured run (default 5; 0: measure it once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scenarios", help="comma-separated subset (the ceilings always run)")
    parser.add_argument("--profile", help="comma-separated scenarios to profile with py-spy during the first run")
    parser.add_argument("--explain", action="store_true", help="write EXPLAIN ANALYZE of every list/analytics query")
    parser.add_argument("--name", help="results file name (default: <rows>rows[-subset])")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory (default bench/results)")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", ADMIN_URL),
                        help="a PostgreSQL URL allowed to CREATE DATABASE")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database (prints its URL)")
    parser.add_argument("--sql", type=Path, help="an SQL file run on the seeded database before the apps start "
                        "(an experiment: a trigger dropped, say)")
    args = parser.parse_args(argv)

    now = datetime.now(UTC)
    every = scenarios(args.rows, now)
    chosen = {s.name for s in every}
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        unknown = wanted - chosen
        if unknown:
            parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}; known: {', '.join(s.name for s in every)}")
        chosen = wanted | {"ceiling_select", "ceiling_insert"} | ({"create"} if "storm" in wanted else set())
    selected = [s for s in every if s.name in chosen]
    profiled = set(args.profile.split(",")) if args.profile else set()
    name = args.name or f"{args.rows}rows" + (f"-{args.scenarios.replace(',', '-')}" if args.scenarios else "")
    wrk = ensure_wrk()

    work_dir = Path(tempfile.mkdtemp(prefix="incident-bench-"))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    processes: list[Process] = []
    started = time.monotonic()
    finished = False
    url = seed.create_database(args.admin_url)
    try:
        print(f"seeding {args.rows:,} incidents …", flush=True)
        t0 = time.monotonic()
        seed.migrate_and_seed(url, args.rows)
        seed.seed_ceiling(url)
        print(f"  seeded in {time.monotonic() - t0:.1f} s", flush=True)
        if args.sql:
            seed.run_sql(url, args.sql.read_text())
            print(f"  ran {args.sql}", flush=True)
        sample = work_dir / "sample.ids"
        sample.write_text("\n".join(seed.sample_incident_ids(url, SAMPLED_IDS)) + "\n")
        if args.explain:
            from bench import explain

            explain_path = out / f"{name}-explain.md"
            explain_path.write_text(explain.explain_report(url, args.rows, now))
            print(f"  EXPLAIN ANALYZE written to {explain_path}", flush=True)

        peers_port, service_port, ceiling_port = free_port(), free_port(), free_port()
        peers_url = f"http://127.0.0.1:{peers_port}"
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "WEB_CONCURRENCY": "2",
            # Sized to the concurrency one worker sees (README, "Sizing the pool"): with fewer
            # connections than in-flight requests, pool waits put p99 in seconds (measured: 4.1 s
            # with 10 for 16 requests per worker, 123 ms with enough), for the ceiling too.
            "DB_POOL_MAX": os.environ.get("DB_POOL_MAX") or str(-(-args.connections // 2)),
            "DB_POOL_MIN": os.environ.get("DB_POOL_MIN") or str(-(-args.connections // 2)),
            # The seed holds thousands of open incidents older than any timeout: left at its default,
            # escalation would work through all of them (3 levels each) during the measurements.
            "ESCALATION_TIMEOUT_MINUTES": "1000000",
            "ONCALL_SERVICE_URL": peers_url,
            "NOTIFICATION_SERVICE_URL": peers_url,
            "ENVIRONMENT": "benchmark",
        }
        peers = Process("peers", [sys.executable, str(ROOT / "bench" / "peers.py"), "--port", str(peers_port)],
                        env, work_dir)
        processes.append(peers)
        service = gunicorn("service", "wsgi:app", service_port, env, work_dir)
        processes.append(service)
        ceiling = gunicorn("ceiling", "ceiling:application", ceiling_port, env, work_dir, "--pythonpath", "bench")
        processes.append(ceiling)
        peers.wait_until_answers(f"{peers_url}/api/v1/oncall/current?team=x")
        service.wait_until_answers(f"http://127.0.0.1:{service_port}/health/ready")
        ceiling.wait_until_answers(f"http://127.0.0.1:{ceiling_port}/ceiling/incidents/inc-0", ok=(404,))
        apps = {"service": (service, service_port), "ceiling": (ceiling, ceiling_port)}
        if any(s.app == "service_cold" for s in selected):
            # The same service with analytics reuse off; few idle connections, so that three apps'
            # pools stay inside PostgreSQL's max_connections.
            cold_port = free_port()
            cold_env = {**env, "ANALYTICS_CACHE_SECONDS": "0", "DB_POOL_MIN": "1"}
            service_cold = gunicorn("service_cold", "wsgi:app", cold_port, cold_env, work_dir)
            processes.append(service_cold)
            service_cold.wait_until_answers(f"http://127.0.0.1:{cold_port}/health/ready")
            apps["service_cold"] = (service_cold, cold_port)

        results: dict[str, dict[str, Any]] = {}
        by_name = {s.name: s for s in every}
        last_cold = next((s.name for s in reversed(selected) if s.app == "service_cold"), None)

        def drive(scenario: Scenario, index: int, duration: float, ids_file: Path | None = None) -> dict[str, Any]:
            """One wrk run of `scenario` (index 0: the warm-up)."""
            _, port = apps[scenario.app]
            connections = scenario.connections or args.connections
            threads = min(args.threads, connections)
            settings: dict[str, Any] = {"threads": threads, "seed": 1000 * index + 7, "path": scenario.path,
                                        "storm_keys": STORM_KEYS}
            if scenario.ids is not None:
                settings["ids_file"] = str(ids_file or sample)
            if scenario.since_days is not None:
                settings["since_days"] = scenario.since_days
            url = f"http://127.0.0.1:{port}" + ("" if scenario.ids or scenario.since_days else scenario.path)
            return run_wrk(wrk, url, wrk_script(scenario, work_dir, settings),
                           threads=threads, connections=connections, duration=duration)

        for scenario in selected:
            process, port = apps[scenario.app]
            base = f"http://127.0.0.1:{port}"
            probe = requests.get(base + scenario.path, timeout=30) if scenario.script == "static.lua" else None
            if probe is not None and probe.status_code == 404:
                results[scenario.name] = {"skipped": f"{scenario.path} answers 404 (not served yet)"}
                print(f"{scenario.name:20s} skipped: {scenario.path} answers 404", flush=True)
                continue
            rss_before = worker_rss_mib(process)
            runs = []
            exhausted = False
            for index in range(args.runs + 1):
                duration = args.warmup if index == 0 else args.duration
                ids_file = None
                if scenario.ids == "open":
                    rate = runs[-1]["rps"] if runs else results.get("ceiling_insert", {}).get("rps") or 2000
                    provisioned = seed.provision_open_incidents(url, max(1000, int(rate * duration * 1.5)))
                    ids_file = work_dir / f"open-{index}.ids"
                    ids_file.write_text("\n".join(provisioned) + "\n")
                # The ceiling again right before each measured run: the machine's speed drifts, and a
                # ratio to a ceiling measured minutes earlier would carry that drift.
                ceiling_rps = None
                if index > 0 and scenario.ceiling and args.ceiling_duration > 0:
                    ceiling_rps = drive(by_name[scenario.ceiling], index, args.ceiling_duration)["rps"]
                spies = []
                if index == 1 and scenario.name in profiled:
                    spies = profile_workers(process, out / "profiles", f"{name}-{scenario.name}", args.duration)
                meter = cpu.CpuMeter({"workers": process.workers(), "postgres": cpu.backends(url)})
                outcome = drive(scenario, index, duration, ids_file)
                outcome["cpu_ms_per_request"] = meter.per_request_ms(outcome["requests"])
                for spy in spies:
                    spy.wait(timeout=args.duration + 60)
                if scenario.ids == "open" and seed.count_open(url, provisioned) == 0:
                    exhausted = True
                if index > 0:
                    runs.append({**outcome, "ceiling_rps": ceiling_rps} if ceiling_rps else outcome)
            result = summarise(scenario, runs)
            result.update(runs=runs, rss_mib_before=rss_before, rss_mib_after=worker_rss_mib(process))
            if exhausted:
                result["note"] = "ran out of provisioned open incidents: some acknowledges were no-ops"
            results[scenario.name] = result
            judge(scenario, result, results, args.rows)
            if scenario.name == "storm":
                judge_storm(result, *seed.storm_outcome(url))
            print(report.console_line(scenario, result), flush=True)
            write_results(out, name, args, now, started, selected, results)  # a crash later keeps these
            if scenario.app == "service_cold" and scenario.name == last_cold:
                # Its pools go with it: the fresh connection of each /health/ready probe, 32 at once,
                # found PostgreSQL's default 100 connections taken by three apps' pools (503s).
                process.stop()

        report.chart(json.loads((out / f"{name}.json").read_text()), out / f"{name}.png")
        print(f"results: {out / name}.json, .md, .png ({round(time.monotonic() - started)} s)", flush=True)

        finished = True
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        if args.keep_database:
            print(f"database kept: {url}")
        else:
            seed.drop_database(args.admin_url, url)
        if finished:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"logs kept in {work_dir}", file=sys.stderr)


def write_results(out: Path, name: str, args: argparse.Namespace, now: datetime, started: float,
                  selected: list[Scenario], results: dict[str, dict[str, Any]]) -> None:
    document = {
        "name": name,
        "started_at": now.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "admin_url"},
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "commit": _git_commit(),
        "scenarios": [{**asdict(s), **results[s.name]} for s in selected if s.name in results],
    }
    (out / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / f"{name}.md").write_text(report.markdown(document))


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())

"""Stream benchmark: creates under wrk with and without 1,000 SSE followers on the 2-worker service.

    python bench/stream.py                                  # 1,000 followers, 15 s runs
    python bench/stream.py --followers 200 --duration 5     # a quick iteration

Reports create throughput without and with the followers, the delay from each `created` event's
commit to its receipt by the followers (p50, p99), worker memory per follower (RSS of both
workers with the followers connected and idle, minus before, divided by their number), and the
CPU each create cost the workers, PostgreSQL and the followers' client (all on this machine).
Twice: creates at full speed, then paced to about --rate a second (the contract's 200 for its
delivery promise). Targets: p99 under 1 s; creates with followers at least 90% of without; under
100 KiB per follower.
Results go to bench/results/stream-<followers>.json; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402

from bench import cpu, seed  # noqa: E402
from bench.run import ADMIN_URL, RESULTS, Process, Scenario, ensure_wrk, run_wrk, start_service, wrk_script  # noqa: E402

CREATE = Scenario("create", "POST a new incident", "/api/v1/incidents", "create.lua")


def create_runner(
    wrk: str, target: str, work_dir: Path, connections: int, *, settings: dict | None = None,
    cpu_groups: Callable[[], dict[str, list[psutil.Process]]] | None = None,
) -> Callable[[float], dict]:
    """A function that drives creates at `target` with wrk for some seconds and returns wrk's summary;
    with `cpu_groups`, also the CPU milliseconds per create each group of processes used meanwhile
    (where the machine's cores went). `settings` go to the script (`delay_ms` paces it)."""
    script = wrk_script(CREATE, work_dir, {"threads": 2, "seed": 7, "path": CREATE.path, **(settings or {})})

    def run(duration: float) -> dict:
        meter = cpu.CpuMeter(cpu_groups()) if cpu_groups else None
        result = run_wrk(wrk, target, script, threads=2, connections=connections, duration=duration)
        if meter is not None:
            result["cpu_ms_per_create"] = meter.per_request_ms(result["requests"])
        return result

    return run


def compare_creates(without: dict, with_load: dict) -> dict:
    """Create throughput and p99 without and with the extra load, and the ratio of throughputs."""
    return {
        "create_rps_without": without["rps"], "create_rps_with": with_load["rps"],
        "create_ratio": round(with_load["rps"] / without["rps"], 3) if without["rps"] else None,
        "create_p99_ms_without": without["p99_ms"], "create_p99_ms_with": with_load["p99_ms"],
    }


def followers_now(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(r'^stream_followers\{transport="sse"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def rss_kib(service: Process) -> int:
    return sum(worker.memory_info().rss for worker in service.workers()) // 1024


def postgres_backends() -> list[psutil.Process]:
    return [process for process in psutil.process_iter(["name"]) if process.info["name"] == "postgres"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0,
                        help="a second comparison with creates paced to about this many a second (0: none)")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args(argv)

    wrk = ensure_wrk()
    work_dir = Path(tempfile.mkdtemp(prefix="incident-stream-bench-"))
    url = seed.create_database(args.admin_url)
    processes: list[Process] = []
    try:
        seed.migrate_and_seed(url, args.rows)
        service, port = start_service(url, work_dir, args.connections, processes)
        target = f"http://127.0.0.1:{port}"
        followers_process: list[psutil.Process] = []

        def cpu_groups() -> dict[str, list[psutil.Process]]:
            return {"workers": service.workers(), "postgres": postgres_backends(), "followers": followers_process}

        def compare(name: str, settings: dict) -> dict:
            """Creates without followers, then with them connected (their own delivery figures)."""
            creates = create_runner(wrk, target, work_dir, args.connections, settings=settings, cpu_groups=cpu_groups)
            creates(3)  # warm-up
            without = creates(args.duration)
            before = rss_kib(service)
            follower_seconds = 60 + args.duration
            followers = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "followers.py"), "--url", target, "--count",
                 str(args.followers), "--seconds", str(follower_seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
            followers_process[:] = [psutil.Process(followers.pid)]
            deadline = time.monotonic() + 60
            while followers_now(port) < args.followers and time.monotonic() < deadline:
                time.sleep(0.5)
            connected = followers_now(port)
            time.sleep(2)
            per_follower_kib = (rss_kib(service) - before) / max(connected, 1)
            with_followers = creates(args.duration)
            followers.terminate()  # the followers print what they measured
            delivered = json.loads(followers.communicate(timeout=follower_seconds + 30)[0].strip().splitlines()[-1])
            followers_process.clear()
            deadline = time.monotonic() + 30
            while followers_now(port) > 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            return {
                "mode": name, "connected": connected, **compare_creates(without, with_followers),
                "errors": without["errors"] + with_followers["errors"],
                "cpu_ms_per_create_without": without["cpu_ms_per_create"],
                "cpu_ms_per_create_with": with_followers["cpu_ms_per_create"],
                "delivery": delivered, "kib_per_follower": round(per_follower_kib, 1),
            }

        runs = [compare("full speed", {})]
        if args.rate:
            # The contract's load for the delivery promise: about `rate` creates a second.
            runs.append(compare(f"about {args.rate:g}/s", {"delay_ms": round(args.connections * 1000 / args.rate)}))
        result = {"followers": args.followers, "duration_s": args.duration, "connections": args.connections,
                  "runs": runs}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"stream-{args.followers}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        seed.drop_database(args.admin_url, url)


if __name__ == "__main__":
    sys.exit(main())

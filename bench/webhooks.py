"""Webhook benchmark: creates under wrk without subscriptions, then with 5 subscriptions (every
event type) to a receiver that answers at once, on the 2-worker service.

    python bench/webhooks.py                       # 15 s runs
    python bench/webhooks.py --duration 5          # a quick iteration

Reports create throughput without and with the subscriptions and their ratio (target: at least
0.85), and the delay from each event's commit to its receipt (target: p99 under 2 s), measured by
the receiver over every delivery of the run with subscriptions and of the backlog it leaves (the
run waits until no delivery is pending, up to --drain seconds). Results go to
bench/results/webhooks-<subscriptions>.json; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench import seed  # noqa: E402
from bench.run import ADMIN_URL, RESULTS, Process, ensure_wrk, free_port, start_service  # noqa: E402
from bench.stream import compare_creates, create_runner  # noqa: E402


def pending(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM incidents.webhook_deliveries WHERE state = 'pending'").scalar_one()
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscriptions", type=int, default=5)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the backlog")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args(argv)

    wrk = ensure_wrk()
    work_dir = Path(tempfile.mkdtemp(prefix="incident-webhook-bench-"))
    url = seed.create_database(args.admin_url)
    processes: list[Process] = []
    receiver: subprocess.Popen | None = None
    try:
        seed.migrate_and_seed(url, args.rows)
        _, port = start_service(url, work_dir, args.connections, processes)
        receiver_port = free_port()
        receiver = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "receiver.py"), "--port", str(receiver_port)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        target = f"http://127.0.0.1:{port}"
        creates = create_runner(wrk, target, work_dir, args.connections)
        creates(3)  # warm-up
        without = creates(args.duration)
        for n in range(args.subscriptions):
            requests.post(f"{target}/api/v1/webhooks", json={"url": f"http://127.0.0.1:{receiver_port}/hook/{n}"},
                          timeout=10).raise_for_status()
        with_hooks = creates(args.duration)
        ended = time.monotonic()
        while (left := pending(url)) and time.monotonic() - ended < args.drain:
            time.sleep(0.5)
        drained_s = round(time.monotonic() - ended, 1)
        receiver.terminate()  # the receiver prints what it measured
        delivered = json.loads(receiver.communicate(timeout=30)[0].strip().splitlines()[-1])
        result = {
            "subscriptions": args.subscriptions, "duration_s": args.duration, "connections": args.connections,
            **compare_creates(without, with_hooks),
            "errors_with": with_hooks["errors"], "delivery": delivered,
            "pending_after_drain": left, "drain_s": drained_s,
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"webhooks-{args.subscriptions}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if receiver is not None and receiver.poll() is None:
            receiver.kill()
        for process in reversed(processes):
            process.stop()
        seed.drop_database(args.admin_url, url)


if __name__ == "__main__":
    sys.exit(main())

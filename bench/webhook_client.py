"""CPU of one webhook delivery attempt in the sender's process: the signature, the POST over a
kept-alive connection, the reply's status, the outcome to record (recording itself excluded).

    python bench/webhook_client.py                      # 3,000 attempts, 8 in flight
    python bench/webhook_client.py --deliveries 10000 --in-flight 1

A gevent process like a worker, with the sender wired by create_app; the receiver
(bench/receiver.py) runs in a process of its own, so the process CPU time counted here is the
sender's alone, whatever else the machine is doing. Prints one JSON line.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gevent.pool  # noqa: E402
import requests  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import free_port  # noqa: E402
from incident_app import create_app  # noqa: E402
from incident_app.settings import Settings  # noqa: E402
from incident_app.webhooks import Attempt, new_secret  # noqa: E402

# About the size of a created incident's event as the feed renders it.
BODY = json.dumps({"cursor": "1234", "type": "created", "incident_id": str(uuid.uuid4()),
                   "created_at": datetime.now(UTC).isoformat(), "details": {},
                   "incident": {"title": "Checkout latency above 2 s", "service": "payment-api", "x": "y" * 700}})


def wait_for(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.post(url, data=b"{}", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError(f"no receiver at {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args(argv)

    port = free_port()
    receiver = subprocess.Popen([sys.executable, str(ROOT / "bench" / "receiver.py"), "--port", str(port)],
                                stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}/hook"
        wait_for(url)
        with tempfile.TemporaryDirectory() as directory:
            app = create_app(Settings(database_url=f"sqlite:///{directory}/unused.db", log_level="WARNING"))
            sender = app.extensions["background"].webhooks
            now = datetime.now(UTC)
            row = SimpleNamespace(id=uuid.uuid4(), webhook_id=uuid.uuid4(), attempts=0, created_at=now,
                                  next_attempt_at=now)
            attempt = Attempt(row, BODY, url, new_secret())
            pool = gevent.pool.Pool(args.in_flight)
            delivered = sum(pool.imap_unordered(lambda _: sender.attempt(attempt, now=now), range(200)))  # warm-up
            cpu, wall = time.process_time(), time.monotonic()
            delivered = sum(pool.imap_unordered(lambda _: sender.attempt(attempt, now=now), range(args.deliveries)))
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        print(json.dumps({
            "deliveries": args.deliveries, "in_flight": args.in_flight, "delivered": delivered,
            "cpu_ms_per_delivery": round(cpu * 1000 / args.deliveries, 3),
            "wall_s": round(wall, 2),
        }))
        return 0 if delivered == args.deliveries else 1
    finally:
        receiver.terminate()
        receiver.wait(10)


if __name__ == "__main__":
    sys.exit(main())

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
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cpu  # noqa: E402
from bench.run import Process, free_port  # noqa: E402
from incident_app import create_app  # noqa: E402
from incident_app.settings import Settings  # noqa: E402
from incident_app.webhooks import Attempt, new_secret  # noqa: E402

# About the size of a created incident's event as the feed renders it.
BODY = json.dumps({"cursor": "1234", "type": "created", "incident_id": str(uuid.uuid4()),
                   "created_at": datetime.now(UTC).isoformat(), "details": {},
                   "incident": {"title": "Checkout latency above 2 s", "service": "payment-api", "x": "y" * 700}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    with tempfile.TemporaryDirectory() as directory:
        receiver = Process("receiver", [sys.executable, str(ROOT / "bench" / "receiver.py"), "--port", str(port)],
                           dict(os.environ), Path(directory))
        try:
            receiver.wait_until_answers(url, ok=(204,), timeout=10)
            app = create_app(Settings(database_url=f"sqlite:///{directory}/unused.db", log_level="WARNING"))
            sender = app.extensions["background"].webhooks
            now = datetime.now(UTC)
            row = SimpleNamespace(id=uuid.uuid4(), webhook_id=uuid.uuid4(), attempts=0, created_at=now,
                                  next_attempt_at=now)
            attempt = Attempt(row, BODY, url, new_secret())
            run = cpu.in_this_process(lambda _: sender.attempt(attempt, now=now), args.deliveries, args.in_flight)
        finally:
            receiver.popen.terminate()
            receiver.popen.wait(10)
    print(json.dumps({
        "deliveries": args.deliveries, "in_flight": args.in_flight, "delivered": run["answered"],
        "cpu_ms_per_delivery": round(run["cpu_s"] * 1000 / args.deliveries, 3),
        "wall_s": round(run["wall_s"], 2),
    }))
    return 0 if run["answered"] == args.deliveries else 1

if __name__ == "__main__":
    sys.exit(main())

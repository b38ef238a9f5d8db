"""CPU of the two peer calls of a create in the caller's process: the On-Call lookup and the
Notification send over kept-alive connections, with their replies decoded.

    python bench/peer_client.py                      # 3,000 creates' calls, 8 in flight
    python bench/peer_client.py --calls 10000 --in-flight 1

A gevent process like a worker, with the clients wired by create_app; the peers (bench/peers.py)
run in a process of their own, so the process CPU time counted here is the caller's alone,
whatever else the machine is doing. Prints one JSON line.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cpu  # noqa: E402
from bench.run import Process, free_port  # noqa: E402
from incident_app import create_app  # noqa: E402
from incident_app.settings import Settings  # noqa: E402

PAGE = {"incident_id": "inc-0123456789abcdef", "engineer": "payment-api-primary@example.com", "channel": "mock",
        "severity": "high", "message": "[HIGH] Payment API error rate above 5% (inc-0123456789abcdef)",
        "notification_id": "7c0d7f5e-0b7a-4d0e-9a55-2a3b8e0c1f00"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="pairs of calls (one create's)")
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as directory:
        peers = Process("peers", [sys.executable, str(ROOT / "bench" / "peers.py"), "--port", str(port)],
                        dict(os.environ), Path(directory))
        try:
            peers.wait_until_answers(f"{url}/api/v1/oncall/current?team=x", timeout=10)
            app = create_app(Settings(database_url=f"sqlite:///{directory}/unused.db", log_level="WARNING",
                                      oncall_service_url=url, notification_service_url=url))
            opening = app.extensions["incident_service"].opening
            oncall, notifier = opening.oncall, opening.outbox.notifier

            def one_create(_: int) -> bool:
                return oncall.current("payment-api").primary is not None and notifier.send(PAGE)

            run = cpu.in_this_process(one_create, args.calls, args.in_flight)
            print(json.dumps({
                "creates": args.calls, "in_flight": args.in_flight, "answered": run["answered"],
                "cpu_ms_per_create": round(run["cpu_s"] * 1000 / args.calls, 3),
                "cpu_ms_per_call": round(run["cpu_s"] * 1000 / (2 * args.calls), 3),
                "wall_s": round(run["wall_s"], 2),
            }))
            return 0 if run["answered"] == args.calls else 1
        finally:
            peers.popen.terminate()
            peers.popen.wait(10)


if __name__ == "__main__":
    sys.exit(main())

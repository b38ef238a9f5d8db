"""A webhook receiver that answers 204 at once, for the webhook benchmark (bench/webhooks.py).

`python bench/receiver.py --port 18010` takes every POST, and on SIGTERM prints one JSON line: how
many deliveries came, how many repeated a `webhook-id`, and the delay from each event's
`created_at` (stamped just before its commit) to its receipt (p50, p99, max). One gevent process.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

delays: list[float] = []
seen: set[str] = set()
repeated = 0


def receiver_app(environ, start_response):
    global repeated
    body = environ["wsgi.input"].read()
    received = time.time()
    message_id = environ.get("HTTP_WEBHOOK_ID", "")
    if message_id in seen:
        repeated += 1
    seen.add(message_id)
    with contextlib.suppress(ValueError, KeyError):
        delays.append(received - datetime.fromisoformat(json.loads(body)["created_at"]).timestamp())
    start_response("204 No Content", [])
    return [b""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as bench/peers.py, for the same reason
    server = WSGIServer(listener, receiver_app, log=None)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)  # SIGTERM: stop and report
    server.start()
    stop.wait()
    server.stop(timeout=1)
    ordered = sorted(delays)

    def quantile(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None

    print(json.dumps({"received": len(ordered), "repeated_ids": repeated, "p50_ms": quantile(0.5),
                      "p99_ms": quantile(0.99), "max_ms": quantile(1.0)}), flush=True)


if __name__ == "__main__":
    main()

"""Many SSE followers in one gevent process, for the stream benchmark (bench/stream.py).

`python bench/followers.py --url http://127.0.0.1:8002 --count 1000 --seconds 30` opens `count`
streams of `created` events, and prints, as one JSON line when the time is up or on SIGTERM, how many were connected and
the delay from each event's `created_at` (stamped just before its commit) to its receipt, timed
by one follower in ten.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

delays: list[float] = []
connected = 0


# One follower in SAMPLE parses what it receives and times it; the others only read it, so that
# this process (on the same machine as the service) spends its CPU on reading, not on JSON.
SAMPLE = 10


def follow(host: str, port: int, path: str, until: float, timed: bool) -> None:
    global connected
    sock = socket.create_connection((host, port), timeout=60)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    buffer = b""
    counted = False
    try:
        while time.time() < until:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return
            received = time.time()
            buffer += chunk
            if not counted and b"retry:" in buffer:
                connected += 1
                counted = True
            if not timed:
                buffer = b""
                continue
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                for line in frame.split(b"\n"):
                    # Chunked transfer puts a size line before data; only data lines are events.
                    if line.startswith(b"data: "):
                        created_at = json.loads(line[6:])["created_at"]
                        delays.append(received - datetime.fromisoformat(created_at).timestamp())
    except OSError:
        pass
    finally:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    parts = urlsplit(args.url)
    until = time.time() + args.seconds
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)  # SIGTERM: stop and report
    greenlets = [gevent.spawn(follow, parts.hostname, parts.port, "/api/v1/stream?types=created", until,
                              index % SAMPLE == 0) for index in range(args.count)]
    stop.wait(args.seconds)
    gevent.killall(greenlets, timeout=5)
    ordered = sorted(delays)

    def quantile(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None

    print(json.dumps({"connected": connected, "received": len(ordered), "p50_ms": quantile(0.5),
                      "p99_ms": quantile(0.99), "max_ms": quantile(1.0)}), flush=True)


if __name__ == "__main__":
    main()

"""Stand-ins for the On-Call and Notification services: real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bench.run import free_port


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""
    client_port: int = 0  # the same on requests that came over one connection


@dataclass
class Behaviour:
    status: int = 200
    body: bytes = b"{}"
    delay: float = 0.0
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)  # sent besides Content-Type and -Length


class _PeerServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: when 30 simultaneous creates open connections to a
    # peer at once, the SYNs beyond it are dropped and retried after 1 s, then 3 s, past the service's
    # client timeout in the tests (2 s), and a page fails that a real peer would have taken.
    request_queue_size = 128


@dataclass
class FakePeer:
    """Answers every request with the current behaviour and records what it was sent."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    received: list[Recorded] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # given: it answers HTTPS with this context's certificate
    keep_alive: bool = True  # False: it closes each connection after its answer

    def __post_init__(self) -> None:
        peer = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # As a real peer behind gunicorn: without it the body waits 40 ms for the delayed ACK of
            # the headers' segment (Nagle), on every call.
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                parts = urlsplit(self.path)
                with peer._lock:
                    peer.received.append(Recorded(self.command, parts.path, parse_qs(parts.query), body,
                                                 dict(self.headers.items()), raw, self.client_address[1]))
                    behaviour = peer.behaviour
                if behaviour.delay:
                    time.sleep(behaviour.delay)
                try:
                    self.send_response(behaviour.status)
                    self.send_header("Content-Type", behaviour.content_type)
                    self.send_header("Content-Length", str(len(behaviour.body)))
                    for name, value in behaviour.headers.items():
                        self.send_header(name, value)
                    if not peer.keep_alive:
                        self.send_header("Connection", "close")  # and the handler closes it
                    self.end_headers()
                    self.wfile.write(behaviour.body)
                except OSError:
                    pass  # the client gave up waiting: that is what a slow-peer test wants

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _PeerServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def respond(
        self, status: int = 200, json_body: Any = None, *, raw: bytes | None = None, delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = raw if raw is not None else json.dumps(json_body if json_body is not None else {}).encode()
        with self._lock:
            self.behaviour = Behaviour(status=status, body=body, delay=delay, headers=headers or {})

    def reset(self) -> None:
        with self._lock:
            self.behaviour = Behaviour()
            self.received.clear()

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests_to(path)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.requests_to(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A URL on which nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"  # outside the ephemeral range: it stays closed

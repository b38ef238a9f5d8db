"""What the HTTP server itself answers, through real gunicorn and raw sockets (the Flask test client
never sees these requests): its refusals are the contract's JSON, a body that stops arriving is a
408, a chunked body over 1 MiB a 413, and thousands of stalled connections leave everyone else
answered."""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.support.gunicorn import GunicornService

REQUEST_TIMEOUT = 3  # REQUEST_TIMEOUT_SECONDS of the service under test
HEADER_TIMEOUT = 5  # gunicorn's keepalive: how long its gevent worker waits for a request's headers


@pytest.fixture(scope="module")
def server(migrated_urls, postgres_available, _session_peers, tmp_path_factory) -> Iterator[GunicornService]:
    oncall, notifier = _session_peers
    service = GunicornService(
        {
            "DATABASE_URL": migrated_urls["postgresql"](),
            "ONCALL_SERVICE_URL": oncall.url,
            "NOTIFICATION_SERVICE_URL": notifier.url,
            "HTTP_CLIENT_TIMEOUT": "2",
            "REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
            "BACKGROUND_WORK": "false",
        },
        workers=2,
        log_path=tmp_path_factory.mktemp("http-server") / "service.log",
    ).start()
    yield service
    service.stop()


def connect(server: GunicornService) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=REQUEST_TIMEOUT + 10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Everything the server sends until it closes the connection, as status, headers and body."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with a request body unread: what came before it stands
        if not data:
            raise
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def exchange(server: GunicornService, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(server) as sock:
        sock.sendall(raw)
        return read_response(sock)


def assert_contract_error(response: tuple[int, dict[str, str], bytes], status: int) -> dict:
    code, headers, body = response
    assert code == status, (code, body[:300])
    assert headers["content-type"].startswith("application/json"), headers
    document = json.loads(body)
    assert document["code"] == status and isinstance(document["status"], str) and document["message"]
    return document


@pytest.mark.parametrize(("raw", "status"), [
    (b"GARBAGE\r\n\r\n", 400),  # malformed request line
    (b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n", 400),  # unknown HTTP version
    (b"GET /health/live HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),  # malformed header
    (b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Thing: a\x01b\r\n\r\n", 400),  # control byte in a header
    (b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),  # bad Content-Length
    (b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # 5 kB path
    (b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10_000 + b"\r\n\r\n", 431),  # 10,000-char header
], ids=["request-line", "http-version", "header", "control-byte", "content-length", "two-lengths", "uri",
        "header-size"])
def test_the_servers_own_refusals_are_contract_json(server, raw, status):
    assert_contract_error(exchange(server, raw), status)


def test_a_body_that_stops_arriving_is_408_then_closed(server):
    started = time.monotonic()
    with connect(server) as sock:
        sock.sendall(b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"title": ')
        response = read_response(sock)  # returns once the server closed the connection
    elapsed = time.monotonic() - started
    assert_contract_error(response, 408)
    assert REQUEST_TIMEOUT - 0.5 <= elapsed <= REQUEST_TIMEOUT + 5, elapsed


def test_headers_that_stop_arriving_are_closed(server):
    started = time.monotonic()
    with connect(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        assert sock.recv(1024) == b""  # closed without an answer
    assert time.monotonic() - started <= HEADER_TIMEOUT + 5


def test_a_chunked_body_over_one_mebibyte_is_413(server):
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17)) + b"0\r\n\r\n"  # 1.06 MiB
    with connect(server) as sock:
        sock.sendall(b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        # Sent beside the read: the server answers and closes before the whole body is in.
        sender = threading.Thread(target=send_ignoring_close, args=(sock, body))
        sender.start()
        response = read_response(sock)
        sender.join()
    assert_contract_error(response, 413)


def send_ignoring_close(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def test_a_chunked_body_under_the_limit_is_served(server):
    payload = json.dumps({"title": "chunked", "service": "storage", "severity": "low"}).encode()
    with connect(server) as sock:
        sock.sendall(b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     + b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
        code, _, body = read_response(sock)
    assert code == 201, body[:300]


def test_a_client_expecting_100_continue_gets_it_then_is_served(server):
    payload = json.dumps({"title": "expect", "service": "storage", "severity": "low"}).encode()
    with connect(server) as sock:
        sock.sendall(b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(payload))
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(payload)
        code, _, body = read_response(sock)
    assert code == 201, body[:300]


STALLED = 3000  # half stalled in their headers, half in their bodies


def test_thousands_of_stalled_connections_leave_everyone_else_answered(server):
    stalled: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    try:
        for index in range(STALLED):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if index % 2:
                sock.sendall(b"GET /api/v1/incidents HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:
                sock.sendall(b"POST /api/v1/incidents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100\r\n\r\n" + b'{"title": ')
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            stalled.append(sock)
        sent_at = time.monotonic()

        open_count = len(stalled)
        slowest = 0.0
        with requests.Session() as others:
            while open_count and time.monotonic() < sent_at + max(REQUEST_TIMEOUT, HEADER_TIMEOUT) + 5:
                for path in ("/health/live", "/api/v1/incidents?limit=5"):
                    started = time.monotonic()
                    response = others.get(server.url + path, timeout=5)
                    slowest = max(slowest, time.monotonic() - started)
                    assert response.status_code == 200, (path, response.status_code)
                for key, _ in selector.select(timeout=0.2):
                    try:
                        data = key.fileobj.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the server closed it
                        selector.unregister(key.fileobj)
                        open_count -= 1
        assert open_count == 0, f"{open_count} stalled connections still open after the timeouts plus 5 s"
        assert slowest < 1.0, f"the slowest answer to everyone else took {slowest:.2f} s"
    finally:
        selector.close()
        for sock in stalled:
            sock.close()

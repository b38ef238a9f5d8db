"""The benchmark's stand-in for the On-Call and Notification services (bench/peers.py): the HTTP it
speaks is its own, so what the service's clients send it, and what curl would, is checked here."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from bench.run import ROOT, Process, free_port
from incident_app.peers.http import PeerClient, peer_pools
from incident_app.peers.notify import NotificationClient
from incident_app.peers.oncall import OnCallClient


@pytest.fixture(scope="module")
def peers(tmp_path_factory) -> Iterator[str]:
    """The stand-in started as the benchmark starts it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = Process("peers", [sys.executable, str(ROOT / "bench" / "peers.py"), "--port", str(port)],
                      dict(os.environ), tmp_path_factory.mktemp("peers"))
    try:
        process.wait_until_answers(f"{url}/api/v1/oncall/current?team=x", timeout=15)
        yield url
    finally:
        process.stop()


def exchange(url: str, *sends: bytes) -> bytes:
    """Send each part in turn on one connection, then read until the stand-in closes it or goes quiet."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        for part in sends:
            conn.sendall(part)
            time.sleep(0.05)  # parts arrive apart: a head or a body split over several reads
        conn.settimeout(0.5)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):  # quiet, or closed with our bytes unread
            pass
    return received


def test_the_services_clients_get_an_engineer_and_a_delivered_page(peers):
    pools = peer_pools()
    oncall = OnCallClient(PeerClient(pools, peers, timeout=2))
    notify = NotificationClient(PeerClient(pools, peers, timeout=2))
    for _ in range(3):  # over the same kept-alive connection
        assert oncall.current("pay ments").primary == "pay ments-primary@example.com"
        assert notify.send({"incident_id": "inc-1", "engineer": "a", "channel": "mock", "message": "m",
                            "severity": "high"})
    assert pools.connection_from_url(peers).num_connections == 1


def test_requests_on_one_connection_are_answered_in_turn_whatever_their_pieces(peers):
    body = b'{"incident_id": "inc-1"}'
    post = b"POST /api/v1/notify HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    get = b"GET /api/v1/oncall/current?team=db HTTP/1.1\r\nHost: x\r\n\r\n"
    received = exchange(peers, post[:10], post[10:] + body[:5], body[5:] + get + get)
    assert received.count(b"HTTP/1.1 202 Accepted") == 1
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert b'"email": "db-primary@example.com"' in received
    assert b"Connection: close" not in received


def test_unknown_paths_and_methods_are_404(peers):
    received = exchange(peers, b"GET /api/v1/notify HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
    assert received.count(b"HTTP/1.1 404 Not Found") == 2


@pytest.mark.parametrize("head", [
    b"POST /api/v1/notify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"POST /api/v1/notify HTTP/1.1\r\nContent-Length: many\r\n\r\n",
    b"NONSENSE\r\n\r\n",
])
def test_what_it_does_not_speak_is_a_400_and_the_connection_closed(peers, head):
    received = exchange(peers, head, b"GET /api/v1/oncall/current?team=a HTTP/1.1\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in received
    assert b"200 OK" not in received  # nothing after it was read


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(peers):
    for request in (b"GET /api/v1/oncall/current?team=a HTTP/1.0\r\n\r\n",
                    b"GET /api/v1/oncall/current?team=a HTTP/1.1\r\nConnection: close\r\n\r\n"):
        received = exchange(peers, request + b"GET /nope HTTP/1.1\r\n\r\n")
        assert received.count(b"HTTP/1.1 200 OK") == 1 and b"Connection: close" in received
        assert b"404" not in received


def test_a_head_that_never_ends_is_cut_off(peers):
    received = exchange(peers, b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 70_000)
    assert received == b""

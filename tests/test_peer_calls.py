"""The On-Call and Notification calls' HTTP path (peers/http.py): a redirect is the peer's answer and
not followed, a reply over 1 MiB or still trickling in at HTTP_CLIENT_TIMEOUT is no answer, and the
connection of a call read to its end serves the next one."""

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from incident_app.peers.http import MAX_REPLY_BYTES, PeerClient, peer_pools
from tests.support.peers import FakePeer

ONCALL_PATH = "/api/v1/oncall/current"
NOTIFY_PATH = "/api/v1/notify"
ALICE = {"primary": {"email": "alice@example.com"}}


def new_incident(client):
    return client.post("/api/v1/incidents", json={"title": "Disk full", "service": "payment-api", "severity": "high"})


@pytest.fixture
def elsewhere() -> Iterator[FakePeer]:
    """Where a redirect points: it answers as a helpful On-Call would."""
    peer = FakePeer()
    peer.respond(200, ALICE)
    yield peer
    peer.close()


def test_a_redirect_from_on_call_is_not_followed(client, oncall, notifier, elsewhere):
    oncall.respond(302, raw=b"", headers={"Location": f"{elsewhere.url}{ONCALL_PATH}?team=payment-api"})
    response = new_incident(client)
    assert response.status_code == 201
    assert response.get_json()["assigned_to"] is None
    assert elsewhere.received == [], "the redirect's target is never called"
    (page,) = notifier.requests_to(NOTIFY_PATH)
    assert page.body["engineer"] == "payment-api"


def test_a_redirect_from_notification_is_a_failed_send(app, client, notifier, elsewhere):
    notifier.respond(307, raw=b"", headers={"Location": f"{elsewhere.url}{NOTIFY_PATH}"})
    sent = app.extensions["metrics"].registry.get_sample_value
    before = sent("oncall_notifications_sent_total", {"channel": "mock", "status": "failed"}) or 0.0
    assert new_incident(client).status_code == 201
    assert sent("oncall_notifications_sent_total", {"channel": "mock", "status": "failed"}) == before + 1
    assert elsewhere.received == []


@pytest.mark.parametrize(("padding", "assigned"), [(MAX_REPLY_BYTES - 200, "alice@example.com"),
                                                   (MAX_REPLY_BYTES + 1, None)])
def test_an_on_call_reply_over_1_mib_is_no_answer(client, oncall, padding, assigned):
    oncall.respond(200, {**ALICE, "padding": "x" * padding})
    response = new_incident(client)
    assert response.status_code == 201
    assert response.get_json()["assigned_to"] == assigned


class TricklingPeer:
    """Sends a whole head and a valid JSON body of `length` bytes, one byte every `every` seconds."""

    def __init__(self, every: float, length: int = 200) -> None:
        self.every = every
        self.body = json.dumps({**ALICE, "padding": ""}).encode()
        self.body = self.body[:-2] + b" " * (length - len(self.body)) + b'"}'
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
            conn.sendall(head.encode())
            for byte in self.body:
                if self.stopped.wait(self.every):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client gave up, as it should

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def test_a_trickling_reply_ends_at_the_timeout():
    peer = TricklingPeer(every=0.05)  # 200 bytes: 10 s to the end, each byte well inside the timeout
    try:
        client = PeerClient(peer_pools(), peer.url, timeout=0.5)
        began = time.monotonic()
        reply = client.call("GET", ONCALL_PATH, params={"team": "payment-api"})
        elapsed = time.monotonic() - began
    finally:
        peer.close()
    assert reply is None
    assert elapsed < 1.0, f"the call took {elapsed:.2f} s with a 0.5 s timeout"


def test_a_reply_read_to_its_end_leaves_its_connection_for_the_next_call(oncall):
    oncall.respond(200, ALICE)
    client = PeerClient(peer_pools(), oncall.url, timeout=2)
    replies = [client.call("GET", ONCALL_PATH, params={"team": "a b&c"}) for _ in range(3)]
    assert [(r.status, r.body) for r in replies] == [(200, ALICE)] * 3
    received = oncall.requests_to(ONCALL_PATH)
    assert len({r.client_port for r in received}) == 1, "one connection"
    assert [r.query for r in received] == [{"team": ["a b&c"]}] * 3


def test_the_base_urls_path_and_credentials_are_sent(oncall):
    client = PeerClient(peer_pools(), oncall.url.replace("://", "://svc:s%40cret@") + "/prefix/", timeout=2)
    reply = client.call("POST", "/api/v1/notify", json={"n": 1})
    assert reply is not None and reply.status == 200
    (request,) = oncall.received
    assert request.path == "/prefix/api/v1/notify" and request.body == {"n": 1}
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["authorization"] == "Basic c3ZjOnNAY3JldA=="  # svc:s@cret
    assert headers["content-type"] == "application/json" and headers["accept"] == "application/json"

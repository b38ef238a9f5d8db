"""GET /api/v1/stream and /ws/incidents in the application itself, on both backends: what is
refused before any stream starts, access keys, and the feed's order and documents. Under real
gunicorn across replicas: test_stream_replicas.py."""

from __future__ import annotations

import json
import threading
import time

import pytest

from incident_app.api import stream
from incident_app.feed.cursor import Cursor

VALID = {"title": "Checkout 500s", "service": "checkout", "severity": "critical"}
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def assert_json_error(response, code):
    assert response.status_code == code, response.get_data()[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == code
    return body


class Frames:
    """The frames of a stream answered by the test client, read as they come (not buffered)."""

    def __init__(self, response) -> None:
        self.response = response
        self.chunks = iter(response.response)
        self.text = ""

    def until(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < count:
            assert time.monotonic() < deadline, f"{len(self.events())} events of {count}"
            self.text += next(self.chunks).decode()
        return self.events()

    def events(self) -> list[dict]:
        found = []
        for frame in self.text.split("\n\n"):
            lines = [line for line in frame.splitlines() if not line.startswith(":") and ": " in line]
            fields = dict(line.split(": ", 1) for line in lines)
            if "data" in fields:
                found.append({"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])})
        return found

    def close(self) -> None:
        self.response.close()


def follow(client, query: str = "", **headers) -> Frames:
    response = client.get(f"/api/v1/stream{query}", headers=headers, buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    frames = Frames(response)
    frames.text += next(frames.chunks).decode()
    assert frames.text == "retry: 3000\n\n"
    return frames


def new_incident(client, **changes) -> str:
    response = client.post("/api/v1/incidents", json={**VALID, **changes})
    assert response.status_code == 201
    return response.get_json()["incident_id"]


# --------------------------------------------------------------------------- refused before the stream


@pytest.mark.parametrize("query, field", [
    ("?severity=urgent", "severity"), ("?types=created,exploded", "types"), ("?types=", "types"),
    ("?service=", "service"), ("?service=" + "s" * 256, "service"), ("?service=a%00b", "service"),
    ("?after=10", "after"), ("?after=zz-1", "after"), ("?after=" + "f" * 17 + "-1", "after"),
    ("?after=ffffffffffffffff-1", "after"),
])
def test_bad_filters_and_cursors_are_422_before_any_stream(client, query, field):
    body = assert_json_error(client.get(f"/api/v1/stream{query}"), 422)
    assert field in body["errors"]


def test_malformed_last_event_id_is_422(client):
    body = assert_json_error(client.get("/api/v1/stream", headers={"Last-Event-ID": "<script>"}), 422)
    assert "Last-Event-ID" in body["errors"]


def test_websocket_bad_query_is_422_before_the_upgrade(client):
    body = assert_json_error(client.get("/ws/incidents?severity=urgent", headers=UPGRADE), 422)
    assert "severity" in body["errors"]


def test_websocket_path_without_an_upgrade_is_a_json_4xx(client):
    assert client.get("/ws/incidents").get_json()["code"] in (400, 404)


@pytest.fixture
def keyed(make_app):
    return make_app(api_keys=("k-123",)).test_client()


@pytest.mark.parametrize("path", ["/api/v1/stream", "/ws/incidents"])
def test_a_missing_or_wrong_key_is_401_before_any_stream_or_upgrade(keyed, path):
    for query in ("", "?access_token=wrong"):
        assert_json_error(keyed.get(f"{path}{query}", headers=UPGRADE), 401)


def test_access_token_in_the_query_serves_a_browser(keyed, caplog):
    frames = follow(keyed, "?access_token=k-123")
    frames.close()
    assert "k-123" not in caplog.text
    bearer = keyed.get("/api/v1/stream", headers={"Authorization": "Bearer k-123"}, buffered=False)
    assert bearer.status_code == 200
    bearer.close()
    # Only the two streams take it: elsewhere the header is required.
    assert_json_error(keyed.get("/api/v1/incidents?access_token=k-123"), 401)


# --------------------------------------------------------------------------- the feed


def test_every_change_arrives_in_order_with_its_documented_shape(client):
    frames = follow(client)
    try:
        incident_id = new_incident(client)
        client.patch(f"/api/v1/incidents/{incident_id}", json={"status": "acknowledged", "author": "bob"})
        events = frames.until(4)  # created, assigned, notified, acknowledged
        assert events[0]["event"] == "created" and events[-1]["event"] == "acknowledged"
        assert {e["event"] for e in events[1:3]} == {"assigned", "notified"}  # one transaction, either order
        for event in events:
            assert event["id"] == event["data"]["cursor"]
            assert set(event["data"]) == {"cursor", "type", "incident_id", "created_at", "actor", "details", "incident"}
            assert event["data"]["incident_id"] == incident_id
        cursors = [Cursor.parse(e["id"]) for e in events]
        assert cursors == sorted(cursors) and len(set(cursors)) == 4
        acknowledged = events[-1]["data"]
        assert acknowledged["actor"] == "bob" and acknowledged["details"] == {"from": "open"}
        item = client.get("/api/v1/incidents").get_json()["incidents"][0]
        assert acknowledged["incident"] == item  # the incident as a list item, after the change
    finally:
        frames.close()


def test_after_replays_what_was_missed_then_goes_live(client):
    first = follow(client, "?types=note_added")
    incident_id = new_incident(client)
    for index in range(3):
        client.patch(f"/api/v1/incidents/{incident_id}", json={"note": f"n{index}"})
    (seen, *_) = first.until(3)
    first.close()
    resumed = follow(client, f"?types=note_added&after={seen['id']}")
    try:
        replayed = resumed.until(2)
        assert [e["data"]["details"]["content"] for e in replayed] == ["n1", "n2"]
        client.patch(f"/api/v1/incidents/{incident_id}", json={"note": "live"})
        assert [e["data"]["details"]["content"] for e in resumed.until(3)] == ["n1", "n2", "live"]
    finally:
        resumed.close()


def test_without_a_cursor_the_stream_starts_from_now(client):
    new_incident(client, title="before")
    frames = follow(client, "?types=created")
    try:
        new_incident(client, title="after")
        (event,) = frames.until(1)
        assert event["data"]["details"]["title"] == "after"
    finally:
        frames.close()


def test_an_idle_stream_sends_a_comment_line(client, monkeypatch):
    # The 15 s of the contract, shortened for the test.
    monkeypatch.setattr(stream, "HEARTBEAT_SECONDS", 0.2)
    frames = follow(client)
    try:
        assert next(frames.chunks).startswith(b":")
    finally:
        frames.close()


def test_a_follower_too_far_behind_is_disconnected(app, client):
    hub = app.extensions["feed"]
    frames = follow(client, "?types=note_added")
    incident_id = new_incident(client)
    follower = next(iter(hub._followers))
    hub.queue_limit = 5  # the 1,000 of the contract, scaled down
    for index in range(8):
        client.patch(f"/api/v1/incidents/{incident_id}", json={"note": f"n{index}"})
    deadline = time.monotonic() + 10
    while not follower.ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert follower.ended == "overflow"
    rest = b"".join(frames.chunks)  # the stream ends
    assert b"too far behind" in rest
    assert hub.follower_count == 0


def test_two_followers_of_one_process_each_get_every_event(client):
    a, b = follow(client, "?types=created"), follow(client, "?types=created")
    try:
        created = [new_incident(client, title=f"t{i}") for i in range(5)]
        for frames in (a, b):
            assert [e["data"]["incident_id"] for e in frames.until(5)] == created
    finally:
        a.close()
        b.close()


def test_stop_ends_every_stream(app, client):
    frames = follow(client)
    threading.Timer(0.3, app.extensions["feed"].stop).start()
    assert b"".join(frames.chunks) == b""  # ends, with nothing more
    assert_json_error(client.get("/api/v1/stream"), 503)


def test_the_events_of_a_busy_moment_leave_in_one_write(app, client):
    """A follower writes at most once per send interval: the first event after a quiet spell at
    once, what arrives within the interval after it in the next write, together."""
    hub = app.extensions["feed"]
    hub.send_interval = 5.0  # 0.2 s in service; here long enough for a spaced burst on a busy machine
    frames = follow(client, "?types=created")
    follower = next(iter(hub._followers))
    writes: list[bytes] = []
    reader = threading.Thread(target=lambda: writes.extend(frames.chunks), daemon=True)  # as a socket would
    reader.start()

    def written(count: int) -> list[list[str]]:
        deadline = time.monotonic() + 20
        while len(writes) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        by_write = []
        for write in writes:
            frames.text = write.decode()
            by_write.append([e["data"]["incident_id"] for e in frames.events()])
        return by_write

    try:
        first = new_incident(client, title="first")
        assert written(1) == [[first]]  # at once
        burst = []
        for index in range(3):  # spaced wider than the relay's reads (20 ms; SQLite's every 200 ms)
            time.sleep(0.3)
            burst.append(new_incident(client, title=f"burst {index}"))
        assert written(2) == [[first], burst]
    finally:
        follower.end("stopping")  # its stream ends; the reader with it
        reader.join(5)
        frames.close()

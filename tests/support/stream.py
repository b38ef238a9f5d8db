"""A follower of the live feed for tests: reads an SSE stream in a thread and keeps what arrived."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Received:
    cursor: str
    type: str
    data: dict[str, Any]
    at: float  # time.monotonic() when it arrived


@dataclass
class SseFollower:
    """GET the stream and parse its frames as a browser's EventSource does (one connection, no
    reconnect: a test says when to come back, with `last_event_id`)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Received] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    status: int | None = None
    ended: bool = False
    error: Exception | None = None

    def __post_init__(self) -> None:
        self._opened = threading.Event()
        self._connection: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._opened.wait(15):
            raise TimeoutError(f"the stream did not open: {self.url}")
        if self.status != 200:
            raise AssertionError(f"stream answered {self.status}")

    def _read(self) -> None:
        parts = urlsplit(self.url)
        try:
            self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            self._connection.request("GET", f"{parts.path}?{parts.query}", headers=self.headers)
            response = self._connection.getresponse()
            self.status = response.status
            if self.status != 200:
                self._opened.set()
            frame: dict[str, str] = {}
            while raw := response.readline():
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if "data" in frame:
                        self.events.append(Received(frame.get("id", ""), frame.get("event", "message"),
                                                    json.loads(frame["data"]), time.monotonic()))
                    elif "retry" in frame:
                        self.retry = int(frame["retry"])
                        self._opened.set()  # the stream's first frame: the follower is in
                    frame = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    frame[name] = value[1:] if value.startswith(" ") else value
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.error = exc  # closed by the test or by the server
        finally:
            self.ended = True
            self._opened.set()

    @property
    def cursors(self) -> list[str]:
        return [event.cursor for event in self.events]

    @property
    def last_event_id(self) -> str:
        return self.events[-1].cursor

    def wait_for(self, accept: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while not accept(list(self.events)):
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout}s; got {len(self.events)} events")
            time.sleep(0.02)
        return list(self.events)

    def close(self) -> None:
        """Disconnect, as a client that goes away does."""
        if self._connection is not None and self._connection.sock is not None:
            with contextlib.suppress(OSError):
                self._connection.sock.shutdown(socket.SHUT_RDWR)  # unblocks the reading thread
        self._thread.join(5)
        if self._connection is not None:
            self._connection.close()

"""A loop of its own: the background work's and the webhook deliveries' (a greenlet under gevent,
a daemon thread elsewhere), started once however often start() is called, stopped by an event
the loop watches."""

from __future__ import annotations

import threading
from collections.abc import Callable


class LoopThread:
    def __init__(self, name: str, run: Callable[[], object], *, wake: Callable[[], object] | None = None) -> None:
        self.name = name
        self.run = run  # returns once `stopping` is set
        self.wake = wake  # cuts the loop's wait short at stop(), when it waits on something else
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self.stopping.clear()
            self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.wake is not None:
            self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

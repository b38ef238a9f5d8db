"""Group commit: concurrent requests of one process share a statement instead of each sending its own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Entry(Generic[T, R]):
    __slots__ = ("done", "error", "item", "leads", "result", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = False
        self.leads = False  # its caller writes the next batch
        self.wake = threading.Event()  # set when done, or when it is this entry's turn to write


class GroupCommit(Generic[T, R]):
    """`submit(item)` returns `write(items)`'s result for `item`, each call of `write` taking every
    item submitted meanwhile (up to `max_batch`).

    No thread of its own: the first caller to find nobody writing writes, and whoever submits while
    it does waits; when it is done, the longest waiting takes the next batch (those queued behind
    it). Alone, a caller writes its item at once; under load, one statement and one commit carry
    many (threads are greenlets under gevent). An error of `write` is raised to every caller of
    that batch.
    """

    def __init__(self, write: Callable[[list[T]], Sequence[R]], *, max_batch: int = 64) -> None:
        self._write = write
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Entry[T, R]] = []
        self._writing = False

    def waiting(self) -> int:
        """Items submitted and not yet taken by a write."""
        with self._lock:
            return len(self._queue)

    def submit(self, item: T) -> R:
        entry: _Entry[T, R] = _Entry(item)
        with self._lock:
            self._queue.append(entry)
            entry.leads = not self._writing
            self._writing = True
        if not entry.leads:
            try:
                self._wait(entry)
            except BaseException:
                self._withdraw(entry)
                raise
        if not entry.done:  # our turn: the batch includes our entry, first in the queue
            self._write_next_batch()
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]

    @staticmethod
    def _wait(entry: _Entry[T, R]) -> None:
        entry.wake.wait()

    def _withdraw(self, entry: _Entry[T, R]) -> None:
        """A caller that stopped waiting (its greenlet killed, say) leaves the queue, and passes the
        turn to write on if it had been given it: the callers behind it must not wait forever."""
        with self._lock:
            if entry in self._queue:
                self._queue.remove(entry)
            if not entry.leads or entry.done:
                return
            following = self._queue[0] if self._queue else None
            self._writing = following is not None
            if following is not None:
                following.leads = True
        if following is not None:
            following.wake.set()

    def _write_next_batch(self) -> None:
        with self._lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        try:
            results = self._write([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"write returned {len(results)} results for {len(batch)} items")
            for entry, result in zip(batch, results, strict=True):
                entry.result = result
        except BaseException as exc:  # every caller of the batch hears of it, the writer included
            for entry in batch:
                entry.error = exc
        finally:
            with self._lock:
                following = self._queue[0] if self._queue else None
                self._writing = following is not None
                if following is not None:
                    following.leads = True
            for entry in batch:
                entry.done = True
                entry.wake.set()
            if following is not None:
                following.wake.set()  # not done: it writes the next batch

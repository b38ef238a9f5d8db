"""Group commit (incident_app.batching), with real threads: who writes, what each batch holds, who
hears of an error."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from incident_app.batching import GroupCommit
from tests.support.reliability import wait_until


class HeldWrites:
    """A write function that records its batches and holds the first one until released."""

    def __init__(self, fail_on: Callable[[list[int]], bool] = lambda _batch: False) -> None:
        self.batches: list[list[int]] = []
        self.writing = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[str]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            self.writing.set()
            assert self.release.wait(10)
        if self.fail_on(items):
            raise RuntimeError(f"cannot write {items}")
        return [f"wrote {item}" for item in items]


def queue_behind_a_held_write(group: GroupCommit, writes: HeldWrites, pool: ThreadPoolExecutor,
                              items: range) -> tuple[Future, list[Future]]:
    """Submit item 0, wait until its write is in progress, then submit `items` one after the other."""
    first = pool.submit(group.submit, 0)
    assert writes.writing.wait(10)
    waiting = []
    for count, item in enumerate(items, start=1):
        waiting.append(pool.submit(group.submit, item))
        assert wait_until(lambda count=count: group.waiting() == count, timeout=10)
    return first, waiting


def test_a_caller_alone_writes_its_item_at_once():
    batches: list[list[int]] = []
    group = GroupCommit(lambda items: batches.append(list(items)) or [item * 2 for item in items])
    assert group.submit(21) == 42
    assert group.submit(5) == 10
    assert batches == [[21], [5]]


def test_callers_arriving_during_a_write_share_the_next_one_each_with_its_own_result():
    writes = HeldWrites()
    group = GroupCommit(writes)
    with ThreadPoolExecutor(max_workers=6) as pool:
        first, waiting = queue_behind_a_held_write(group, writes, pool, range(1, 6))
        writes.release.set()
        assert first.result(10) == "wrote 0"
        assert [future.result(10) for future in waiting] == [f"wrote {item}" for item in range(1, 6)]
    assert writes.batches == [[0], [1, 2, 3, 4, 5]]
    assert group.waiting() == 0


def test_a_batch_takes_at_most_max_batch_items_in_arrival_order():
    writes = HeldWrites()
    group = GroupCommit(writes, max_batch=2)
    with ThreadPoolExecutor(max_workers=6) as pool:
        first, waiting = queue_behind_a_held_write(group, writes, pool, range(1, 6))
        writes.release.set()
        assert [future.result(10) for future in (first, *waiting)] == [f"wrote {item}" for item in range(6)]
    assert writes.batches == [[0], [1, 2], [3, 4], [5]]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_goes_on():
    writes = HeldWrites(fail_on=lambda batch: 1 in batch)
    group = GroupCommit(writes, max_batch=2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first, waiting = queue_behind_a_held_write(group, writes, pool, range(1, 4))
        writes.release.set()
        assert first.result(10) == "wrote 0"
        for future in waiting[:2]:
            with pytest.raises(RuntimeError, match=r"cannot write \[1, 2\]"):
                future.result(10)
        assert waiting[2].result(10) == "wrote 3"
    assert writes.batches == [[0], [1, 2], [3]]
    assert group.submit(4) == "wrote 4"  # nobody is left writing


def test_a_write_answering_for_fewer_items_than_it_was_given_is_an_error_for_each():
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.submit(1)


class GaveUp(Exception):
    pass


@pytest.mark.parametrize("when", ["while queued", "when handed the turn to write"])
def test_a_caller_that_stops_waiting_holds_nobody_up(when):
    """A waiting caller can be interrupted (a killed greenlet, say): it leaves the queue, and if it
    had just been given the turn to write, the next caller takes it instead of everyone waiting."""

    class Quitting(GroupCommit):
        @staticmethod
        def _wait(entry) -> None:
            if entry.item == 1 and when == "while queued":
                assert wait_until(lambda: group.waiting() == 3, timeout=10)
                raise GaveUp()
            assert entry.wake.wait(10), "nobody took the turn to write"  # a failure, not a hang
            if entry.item == 1 and not entry.done:
                raise GaveUp()

    writes = HeldWrites()
    group = Quitting(writes)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(group.submit, 0)
        assert writes.writing.wait(10)
        quitter = pool.submit(group.submit, 1)
        assert wait_until(lambda: group.waiting() == 1, timeout=10)
        others = [pool.submit(group.submit, 2), pool.submit(group.submit, 3)]
        if when == "while queued":
            with pytest.raises(GaveUp):
                quitter.result(10)
            assert group.waiting() == 2
        writes.release.set()
        assert first.result(10) == "wrote 0"
        assert [future.result(10) for future in others] == ["wrote 2", "wrote 3"]
        with pytest.raises(GaveUp):
            quitter.result(10)
    assert writes.batches == [[0], [2, 3]]
    assert group.submit(4) == "wrote 4"  # nobody is left writing

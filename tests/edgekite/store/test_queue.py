"""The writer's queue: bounded in items and bytes (the edge's backpressure), batches by
weight, and never leaves a producer waiting on a writer that is filling its batch."""

from __future__ import annotations

import threading
import time

import pytest

from edgekite.store.queue import BoundedQueue, QueueClosedError


def weight(item: int) -> int:
    return item


def test_an_empty_queue_returns_nothing_after_the_first_wait() -> None:
    q: BoundedQueue[int] = BoundedQueue(10, 1 << 20)
    t0 = time.monotonic()
    assert q.get_batch(10, weight, first_wait=0.1, fill_wait=0.1) == []
    assert 0.09 <= time.monotonic() - t0 < 1.0


def test_the_first_item_wakes_the_writer_and_a_trickle_commits_after_the_fill_wait() -> None:
    q: BoundedQueue[int] = BoundedQueue(100, 1 << 20)
    threading.Timer(0.05, q.put, args=(1, 10)).start()
    t0 = time.monotonic()
    assert q.get_batch(1000, weight, first_wait=5.0, fill_wait=0.2) == [1]
    assert 0.2 <= time.monotonic() - t0 < 1.5, "waited for the batch to fill, then took what came"


def test_a_full_batch_is_taken_as_soon_as_its_weight_is_reached() -> None:
    q: BoundedQueue[int] = BoundedQueue(100, 1 << 20)

    def producer() -> None:
        for _ in range(4):
            time.sleep(0.03)
            q.put(1, 10)

    threading.Thread(target=producer).start()
    t0 = time.monotonic()
    batch = q.get_batch(4, weight, first_wait=5.0, fill_wait=5.0)
    assert batch == [1, 1, 1, 1]
    assert time.monotonic() - t0 < 2.0, "did not sit out the 5 s fill wait once the batch was full"


def test_an_item_that_would_overflow_the_batch_ends_it_and_waits_for_the_next() -> None:
    q: BoundedQueue[int] = BoundedQueue(100, 1 << 20)
    q.put(600, 10)
    threading.Timer(0.05, q.put, args=(600, 10)).start()
    t0 = time.monotonic()
    assert q.get_batch(1000, weight, first_wait=1.0, fill_wait=5.0) == [600]
    assert time.monotonic() - t0 < 2.0
    assert q.get_batch(1000, weight, first_wait=1.0, fill_wait=0.01) == [600]


@pytest.mark.parametrize(("max_items", "max_bytes", "size"), [(2, 1 << 20, 1), (100, 100, 60)])
def test_put_blocks_while_full_until_the_writer_takes_a_batch(
    max_items: int, max_bytes: int, size: int
) -> None:
    q: BoundedQueue[int] = BoundedQueue(max_items, max_bytes)
    for _ in range(max_items if max_items == 2 else 1):
        assert q.put(1, size)
    assert not q.put(1, size, timeout=0.05), "no room: put times out"
    putter = threading.Thread(target=q.put, args=(1, size))
    putter.start()
    first = q.get_batch(1000, weight, first_wait=1.0, fill_wait=0.2)
    putter.join(2.0)
    assert not putter.is_alive(), "taking a batch made room for the blocked producer"
    rest = q.get_batch(1000, weight, first_wait=1.0, fill_wait=0.01)
    assert len(first) + len(rest) == (3 if max_items == 2 else 2)


def test_a_full_queue_wakes_a_writer_that_is_filling_its_batch() -> None:
    """Producers never wait for the fill timeout: when the queue fills, the writer moves the
    items into its batch at once."""
    q: BoundedQueue[int] = BoundedQueue(3, 1 << 20)
    refused: list[int] = []

    def producer() -> None:
        time.sleep(0.05)
        for i in range(10):
            if not q.put(1, 1, timeout=0.5):
                refused.append(i)

    q.put(1, 1)
    t = threading.Thread(target=producer)
    t.start()
    batch = q.get_batch(1000, weight, first_wait=1.0, fill_wait=1.0)
    t.join()
    assert refused == []
    assert len(batch) + len(q.get_batch(1000, weight, first_wait=0.1, fill_wait=0.01)) == 11


def test_close_wakes_the_writer_and_refuses_new_items() -> None:
    q: BoundedQueue[int] = BoundedQueue(10, 1 << 20)
    threading.Timer(0.05, q.close).start()
    t0 = time.monotonic()
    assert q.get_batch(10, weight, first_wait=5.0, fill_wait=5.0) == []
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(QueueClosedError):
        q.put(1, 1)

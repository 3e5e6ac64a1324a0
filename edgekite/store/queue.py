"""A queue bounded in both items and bytes, feeding the single SQLite writer.

When it is full, ``put`` blocks the producer's thread: for MQTT that stops the socket being
read, so the broker (not our RAM) holds the backlog. That is the edge's backpressure.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosedError(RuntimeError):
    """The store is shutting down and takes no more work."""


class BoundedQueue(Generic[T]):
    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def _has_room(self, size: int) -> bool:
        # An item larger than the byte bound still goes in alone, or it could never enter.
        if not self._items:
            return True
        return len(self._items) < self._max_items and self._bytes + size <= self._max_bytes

    def put(self, item: T, size: int, timeout: float | None = None) -> bool:
        """Wait for room and enqueue. False on timeout; raises once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed and not self._has_room(size):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if self._closed:
                raise QueueClosedError("the edge store is closed")
            self._items.append((item, size))
            self._bytes += size
            self._cond.notify_all()
            return True

    def get_batch(
        self, max_weight: int, weight_of: Callable[[T], int], first_wait: float, fill_wait: float
    ) -> list[T]:
        """Take items up to ``max_weight`` (e.g. events): wait ``first_wait`` for the first,
        then up to ``fill_wait`` more for the batch to fill, so a trickle still commits fast."""
        out: list[T] = []
        weight = 0
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(first_wait)
            if not self._items:
                return out
            fill_deadline = time.monotonic() + fill_wait
            while True:
                while self._items and weight < max_weight:
                    item, size = self._items[0]
                    w = weight_of(item)
                    if out and weight + w > max_weight:
                        break
                    self._items.popleft()
                    self._bytes -= size
                    out.append(item)
                    weight += w
                self._cond.notify_all()
                remaining = fill_deadline - time.monotonic()
                if weight >= max_weight or remaining <= 0 or self._closed:
                    return out
                if self._items:
                    return out  # the next item would overflow the batch
                self._cond.wait(remaining)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

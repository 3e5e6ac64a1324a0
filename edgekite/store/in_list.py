"""``IN (?, ?, …)`` lists of a few fixed lengths.

Python's sqlite3 keeps a compiled statement per distinct SQL text (128 per connection). An
IN-list of every length from 1 to 2,000, as batches of varying size produce, fills that cache
with large programs: measured +29 MB RSS after 300 lengths, on an edge that must stay small.
Padding the list to the next power of two keeps the texts to about ten per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

MAX_IN = 1024  # callers cut longer lists into chunks of this size


def padded_in(values: Sequence[T], filler: T) -> tuple[str, list[T]]:
    """The placeholders and parameters for ``IN (...)`` over ``values`` (at most MAX_IN),
    padded with ``filler``, a value that matches nothing."""
    if len(values) > MAX_IN:
        raise ValueError(f"{len(values)} values; cut them into chunks of {MAX_IN}")
    size = max(8, 1 << max(len(values) - 1, 0).bit_length())
    return ",".join("?" * size), [*values, *([filler] * (size - len(values)))]

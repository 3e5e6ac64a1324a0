"""Exponential backoff with jitter, so a fleet of edges does not return to a hub in lockstep."""

from __future__ import annotations

import random


class Backoff:
    """``next_delay()`` after each failure: initial·2ⁿ capped at ``maximum``, times U(0.5, 1)."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        base: float = min(self.maximum, self.initial * 2.0 ** min(self.failures, 32))
        self.failures += 1
        return base * float(self._rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.failures = 0

"""Per-edge token buckets: pure arithmetic on an injected clock, so it is tested without sleeping."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # tokens (events) per second
    burst: float
    tokens: float
    updated: float  # monotonic seconds

    def take(self, n: int, now: float) -> float:
        """Take ``n`` tokens and return 0, or take nothing and return the seconds to wait.

        A batch larger than the burst is admitted when the bucket is full (the debt is repaid
        before the next one), so no batch size is refused forever.
        """
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        need = min(float(n), self.burst)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, default_rate: float, burst: int) -> None:
        self.default_rate = default_rate
        self.burst = float(burst)
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, edge_id: str, n: int, now: float, rate: float | None = None) -> float:
        """0 when ``n`` events from ``edge_id`` may pass now, else seconds until they may."""
        if n <= 0:
            return 0.0
        bucket = self._buckets.get(edge_id)
        if bucket is None:
            bucket = TokenBucket(rate or self.default_rate, self.burst, self.burst, now)
            self._buckets[edge_id] = bucket
        return bucket.take(n, now)

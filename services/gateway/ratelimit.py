"""Per-caller token buckets: each caller (an API key's name, or a client IP when keys
are off) may make ``burst`` requests at once and ``rate`` per second after that. The
clock is injected (monotonic milliseconds) so tests need no sleeps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from services.common.clock import mono_ms

MAX_BUCKETS = 10_000
"""Buckets kept at most (IP mode can see many callers); full ones are forgotten first."""


@dataclass
class Bucket:
    tokens: float
    stamp_ms: float


class RateLimiter:
    """``take(caller)`` spends one token of the caller's bucket, or says how long to
    wait for one. ``rate``/``burst`` given to ``take`` override the defaults (per-key
    limits); a caller with no rate is never limited."""

    def __init__(
        self,
        rate_per_s: float | None,
        burst: int,
        *,
        clock: Callable[[], float] = mono_ms,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._max = max_buckets
        self._buckets: dict[str, Bucket] = {}

    def take(self, caller: str, rate_per_s: float | None = None, burst: int | None = None) -> int:
        """0 when the request may go ahead, else the whole seconds (>= 1) until the
        caller's next token."""
        rate = rate_per_s or self.rate_per_s
        if rate is None:
            return 0
        size = float(burst or self.burst)
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            self._make_room(now, rate, size)
            bucket = self._buckets[caller] = Bucket(size, now)
        bucket.tokens = min(size, bucket.tokens + (now - bucket.stamp_ms) / 1000.0 * rate)
        bucket.stamp_ms = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / rate))

    def _make_room(self, now: float, rate: float, size: float) -> None:
        if len(self._buckets) < self._max:
            return
        refilled = [
            caller
            for caller, b in self._buckets.items()
            if b.tokens + (now - b.stamp_ms) / 1000.0 * rate >= size
        ]
        for caller in refilled or list(self._buckets)[: self._max // 10 or 1]:
            del self._buckets[caller]

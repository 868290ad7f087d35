"""Latency quantiles from a mergeable sketch (DDSketch: every quantile within 1% relative
error, whatever the distribution; sketches of two windows or shards merge exactly)."""

from __future__ import annotations

from collections.abc import Iterable

from ddsketch import DDSketch

RELATIVE_ACCURACY = 0.01
QUANTILES = (0.5, 0.9, 0.99)


class LatencySketch:
    """Milliseconds in, quantiles out; ``merge`` combines sketches of disjoint samples."""

    def __init__(self, values: Iterable[float] = ()) -> None:
        self._sketch = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
        for value in values:
            self.add(value)

    def add(self, value_ms: float) -> None:
        # DDSketch keeps values <= 0 in one zero bucket; latencies are positive anyway
        self._sketch.add(max(float(value_ms), 0.0))

    def merge(self, other: LatencySketch) -> None:
        self._sketch.merge(other._sketch)

    @property
    def count(self) -> int:
        return int(self._sketch.count)

    def quantile(self, q: float) -> float | None:
        """The q-quantile in ms, None for an empty sketch."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within 0..1, not {q}")
        if self.count == 0:
            return None
        value = self._sketch.get_quantile_value(q)
        return None if value is None else float(value)

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> dict[str, float | None]:
        """``{"p50": ..., "p90": ..., "p99": ...}``."""
        return {f"p{q * 100:g}": self.quantile(q) for q in qs}

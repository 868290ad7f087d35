"""Confidence intervals for the figures compare reports (95% by default)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate, its interval and the number of observations behind it."""

    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: an undefined figure (no data) is None, never NaN."""
        return {
            "value": _finite(self.value),
            "low": _finite(self.low),
            "high": _finite(self.high),
            "n": self.n,
        }

    def above(self, other: Interval) -> bool:
        """True when this interval lies entirely above ``other``."""
        return self.low > other.high


NAN = float("nan")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of a proportion (sound near 0 and 1, unlike Wald's)."""
    if n <= 0:
        return Interval(NAN, NAN, NAN, 0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, not {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_interval(values: Sequence[float], z: float = Z95) -> Interval:
    """The mean and its normal-approximation interval (needs a few dozen values)."""
    n = len(values)
    if n == 0:
        return Interval(NAN, NAN, NAN, 0)
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, NAN, NAN, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n)

"""Drift between a reference window and a current one: the population stability index
over the reference's quantile bins, and the two-sample Kolmogorov-Smirnov statistic.

Rules of thumb for PSI: below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a
large one. KS is the largest gap between the two empirical distribution functions.

PSI is biased upwards on small samples (about ``(bins - 1) * (1/n + 1/m)`` with no
drift at all), so the bins shrink with the smaller sample: one per 20 values, from 2 to
10. A window of 60 values uses 3 bins, of 200 or more the usual 10.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

PSI_ALERT = 0.25
VALUES_PER_BIN = 20
MAX_BINS = 10
EPSILON = 1e-4  # keeps empty bins finite in the PSI's logarithm


@dataclass(frozen=True, slots=True)
class Drift:
    psi: float
    ks: float
    reference_n: int
    current_n: int

    @property
    def alert(self) -> bool:
        return self.psi > PSI_ALERT

    def as_dict(self) -> dict[str, object]:
        return {
            "psi": self.psi,
            "ks": self.ks,
            "reference_n": self.reference_n,
            "current_n": self.current_n,
            "alert": self.alert,
        }


def bin_edges(reference: Sequence[float], bins: int = 10) -> list[float]:
    """Inner edges at the reference's quantiles (duplicates dropped)."""
    ordered = sorted(reference)
    edges = {ordered[min(len(ordered) - 1, (len(ordered) * i) // bins)] for i in range(1, bins)}
    return sorted(edges)


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``."""
    if not reference or not current:
        return float("nan")
    edges = bin_edges(reference, bins)
    ref = _shares(reference, edges)
    cur = _shares(current, edges)
    return math.fsum(
        (c - r) * math.log(max(c, EPSILON) / max(r, EPSILON)) for r, c in zip(ref, cur, strict=True)
    )


def ks(reference: Sequence[float], current: Sequence[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic."""
    if not reference or not current:
        return float("nan")
    a, b = sorted(reference), sorted(current)
    gap = 0.0
    for x in sorted(set(a) | set(b)):
        gap = max(gap, abs(bisect.bisect_right(a, x) / len(a) - bisect.bisect_right(b, x) / len(b)))
    return gap


def fitted_bins(n: int, m: int) -> int:
    """PSI bins for samples of ``n`` and ``m`` values: one per ``VALUES_PER_BIN`` of the
    smaller, from 2 to ``MAX_BINS``."""
    return max(2, min(MAX_BINS, min(n, m) // VALUES_PER_BIN))


def drift(reference: Sequence[float], current: Sequence[float], bins: int | None = None) -> Drift:
    """PSI (over ``bins``, fitted to the samples' sizes when None) and KS."""
    used = bins or fitted_bins(len(reference), len(current))
    return Drift(
        psi(reference, current, used), ks(reference, current), len(reference), len(current)
    )


def _shares(values: Sequence[float], edges: list[float]) -> list[float]:
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect.bisect_right(edges, v)] += 1
    return [c / len(values) for c in counts]

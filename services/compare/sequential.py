"""Always-valid sequential tests: a confidence sequence for a mean that may be looked at
after every request without inflating the error rate.

The boundary is the two-sided normal-mixture one (Robbins; the mixture SPRT of Johari
et al., "Always valid inference", 2017/2022) in the asymptotic form of Waudby-Smith,
Arbour, Sinha, Kennedy and Ramdas ("Time-uniform central limit theory and asymptotic
confidence sequences", Annals of Statistics 2024): with ``n`` observations of mean
``m`` and sample standard deviation ``s``,

    m +- s * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * log( sqrt(n rho^2 + 1) / alpha ) ),

which holds for every ``n`` at once with probability about ``1 - alpha`` (exactly, in
the limit; the variance is a plug-in). ``rho`` sets where it is tightest: ``rho^2 =
(-2 log alpha + log(-2 log alpha + 1)) / tuned_n``. The mixture likelihood ratio
``Lambda_n`` (an e-value) crosses ``1/alpha`` exactly when the sequence excludes 0, so
``min(1, 1/Lambda_n)`` is an always-valid p-value for "the mean is 0".

Pure functions over running sums: no I/O, no dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_TUNED_N = 2000  # the sample size where the boundary is tightest
MIN_N = 100  # no decision on fewer observations (the plug-in variance needs some)


class Call(StrEnum):
    """A metric's decision: the challenger is better, worse, or it is too early."""

    BETTER = "better"
    WORSE = "worse"
    UNDECIDED = "undecided"


@dataclass
class Running:
    """Count, mean and sum of squared deviations of a stream (Welford)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def extend(self, values: Iterable[float]) -> Running:
        for value in values:
            self.add(value)
        return self

    @property
    def sd(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else math.nan


@dataclass(frozen=True, slots=True)
class ConfidenceSequence:
    """The confidence sequence of a mean at ``n``, and its test of "the mean is 0"."""

    n: int
    mean: float
    low: float
    high: float
    e_value: float  # the mixture likelihood ratio against mean 0
    alpha: float

    @property
    def p_value(self) -> float:
        """The always-valid p-value of "the mean is 0" at this n."""
        return min(1.0, 1.0 / self.e_value) if self.e_value > 0 else 1.0


def rho_squared(alpha: float, tuned_n: float = DEFAULT_TUNED_N) -> float:
    """The mixture's precision that makes the boundary tightest at ``tuned_n``."""
    c = -2.0 * math.log(alpha)
    return (c + math.log(c + 1.0)) / tuned_n


def confidence_sequence(
    stats: Running, alpha: float = 0.05, tuned_n: float = DEFAULT_TUNED_N
) -> ConfidenceSequence:
    """The (1 - alpha) confidence sequence of the mean of ``stats`` at its n (see the
    module doc); an undefined one (NaN bounds, e-value 1) below two observations."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    n, sd = stats.n, stats.sd
    if n < 2 or not math.isfinite(sd):
        return ConfidenceSequence(n, stats.mean if n else math.nan, math.nan, math.nan, 1.0, alpha)
    rho2 = rho_squared(alpha, tuned_n)
    growth = n * rho2 + 1.0
    radius = sd * math.sqrt(2.0 * growth / (n * n * rho2) * math.log(math.sqrt(growth) / alpha))
    if sd > 0:
        total = n * stats.mean / sd  # the standardised sum
        log_e = rho2 * total * total / (2.0 * growth) - 0.5 * math.log(growth)
        e_value = math.exp(min(log_e, 700.0))
    else:
        e_value = math.inf if stats.mean != 0 else 1.0
    return ConfidenceSequence(
        n, stats.mean, stats.mean - radius, stats.mean + radius, e_value, alpha
    )


@dataclass(frozen=True, slots=True)
class Direction:
    """Which way is better for a metric (``higher``: +1, lower: -1) and how far the
    challenger may fall behind before it counts as worse (``margin``, >= 0, in the
    metric's difference units)."""

    higher: bool
    margin: float = 0.0


def call(seq: ConfidenceSequence, direction: Direction, min_n: int = MIN_N) -> Call:
    """``better`` when the sequence of challenger-minus-champion differences lies
    entirely on the good side of 0, ``worse`` when entirely beyond ``margin`` on the
    bad side, else (or below ``min_n`` observations) ``undecided``."""
    if seq.n < min_n or math.isnan(seq.low):
        return Call.UNDECIDED
    sign = 1.0 if direction.higher else -1.0
    good_low = min(sign * seq.low, sign * seq.high)  # the bound nearest the bad side
    good_high = max(sign * seq.low, sign * seq.high)
    if good_low > 0:
        return Call.BETTER
    if good_high < -direction.margin:
        return Call.WORSE
    return Call.UNDECIDED

"""Thompson sampling for a policy's bandit stage: arm posteriors from rewards, each arm's
exact probability of being drawn, guard rails, and one stable draw per request.

A bandit stage (``pick: bandit`` in a policy stage, ``bandit:`` section: see
services.common.policy) lets one of its models answer, chosen by Thompson sampling on
the rewards clients fed back (``POST /v1/feedback``). The posterior of each arm's mean
reward comes from ``ArmStats`` (count, sum and sum of squares of its rewards):

- ``bernoulli`` rewards (0/1; a reward in [0, 1] counts as that fraction of a success):
  Beta(1 + successes, 1 + failures);
- ``gaussian`` rewards (any real): Normal(mean, variance / n), the variance from the
  sample (1 until an arm has two rewards); an arm without rewards is Normal(0, 10^6),
  so it is tried.

Thompson sampling draws one value from every posterior and takes the largest. The
probability of each arm winning that draw is computed here by numerical integration,
``P(i) = integral of pdf_i(x) * prod_{j != i} cdf_j(x) dx``, on a grid that follows
every posterior's mass, so the logged propensity is exact to well under 1% (tested
against a million Monte Carlo draws) rather than a sample estimate. The guard rails then
apply: each arm gets at least ``min_share`` and the champion at least
``champion_floor``. The arm is drawn from those probabilities with one uniform number
hashed from the endpoint, the policy version and the request id, so a request read
twice, or decided by another replica holding the same learned state, gets the same
arm, and the propensity logged is the probability of exactly that draw.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np

GAUSSIAN_PRIOR_SD = 1000.0
_HASH_SPACE = float(2**64)
_GRID_PER_ARM = 400
_SPAN_SD = 9.0


@dataclass(frozen=True, slots=True)
class ArmStats:
    """The rewards one arm earned: how many, their sum and their sum of squares."""

    n: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    def add(self, reward: float) -> ArmStats:
        return ArmStats(self.n + 1, self.total + reward, self.squares + reward * reward)


Stats = Mapping[str, ArmStats]
"""Arm -> its rewards (one context bucket)."""


def arm_probabilities(
    arms: Sequence[str],
    stats: Stats,
    *,
    reward: str = "bernoulli",
    min_share: float = 0.0,
    champion: str | None = None,
    champion_floor: float = 0.0,
) -> dict[str, float]:
    """Each arm's probability of being drawn: Thompson sampling, then the guard rails."""
    key = tuple((a, _as_tuple(stats.get(a))) for a in arms)
    raw = _thompson(key, reward)
    return guard(dict(zip(arms, raw, strict=True)), min_share, champion, champion_floor)


def guard(
    probs: Mapping[str, float], min_share: float, champion: str | None, champion_floor: float
) -> dict[str, float]:
    """``probs`` with every arm at least ``min_share`` and ``champion`` at least
    ``champion_floor``, the rest scaled down in proportion (the policy checks that
    ``champion_floor + (k - 1) * min_share <= 1``)."""
    k = len(probs)
    out = {a: min_share + (1.0 - k * min_share) * p for a, p in probs.items()}
    if champion is not None and champion in out and out[champion] < champion_floor:
        others = [a for a in out if a != champion]
        spare = 1.0 - champion_floor - len(others) * min_share
        extra = sum(out[a] - min_share for a in others)
        for a in others:
            share = (out[a] - min_share) / extra if extra > 0 else 1.0 / len(others)
            out[a] = min_share + spare * share
        out[champion] = champion_floor
    total = math.fsum(out.values())
    return {a: p / total for a, p in out.items()}


def uniform_draw(endpoint: str, version: int, request_id: str) -> float:
    """A number in [0, 1) fixed by the request: the same on every replica and every read."""
    text = f"bandit\0{endpoint}\0{version}\0{request_id}".encode()
    digest = hashlib.sha256(text).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPACE


def pick(probs: Mapping[str, float], u: float) -> str:
    """The arm whose slice of [0, 1) holds ``u`` (arms in the order given)."""
    edge = 0.0
    last = ""
    for arm, p in probs.items():
        edge += p
        last = arm
        if u < edge:
            return arm
    return last


def _as_tuple(stats: ArmStats | None) -> tuple[float, float, float]:
    return (0.0, 0.0, 0.0) if stats is None else (stats.n, stats.total, stats.squares)


@lru_cache(maxsize=512)
def _thompson(arms: tuple[tuple[str, tuple[float, float, float]], ...], reward: str) -> list[float]:
    """P(each arm's posterior draw is the largest), by integration on a shared grid."""
    if len(arms) == 1:
        return [1.0]
    posteriors = [_posterior(s, reward) for _, s in arms]
    grid = _grid(posteriors, bounded=reward == "bernoulli")
    pdfs = [_pdf(p, grid, reward) for p in posteriors]
    cdfs = []
    for pdf in pdfs:
        steps = np.diff(grid) * (pdf[1:] + pdf[:-1]) / 2.0
        cdf = np.concatenate(([0.0], np.cumsum(steps)))
        cdfs.append(cdf / cdf[-1] if cdf[-1] > 0 else cdf)
    out = []
    for i, pdf in enumerate(pdfs):
        others = np.ones_like(grid)
        for j, cdf in enumerate(cdfs):
            if j != i:
                others = others * cdf
        density = pdf / max(_trapezoid(pdf, grid), 1e-300) * others
        out.append(max(_trapezoid(density, grid), 0.0))
    total = math.fsum(out)
    return [p / total for p in out] if total > 0 else [1.0 / len(arms)] * len(arms)


def _posterior(stats: tuple[float, float, float], reward: str) -> tuple[float, float]:
    """(a, b) of the Beta posterior, or (mean, sd) of the Normal one."""
    n, total, squares = stats
    if reward == "bernoulli":
        successes = min(max(total, 0.0), n)
        return 1.0 + successes, 1.0 + n - successes
    if n <= 0:
        return 0.0, GAUSSIAN_PRIOR_SD
    mean = total / n
    var = (squares - n * mean * mean) / (n - 1) if n >= 2 else 1.0
    return mean, math.sqrt(max(var, 1e-12) / n)


def _spread(params: tuple[float, float], bounded: bool) -> tuple[float, float]:
    """Where a posterior's mass lies: (centre, sd)."""
    if not bounded:
        return params
    a, b = params
    mean = a / (a + b)
    return mean, math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


def _grid(posteriors: list[tuple[float, float]], bounded: bool) -> np.ndarray:
    """Points dense wherever any posterior has mass."""
    parts = []
    for params in posteriors:
        centre, sd = _spread(params, bounded)
        parts.append(np.linspace(centre - _SPAN_SD * sd, centre + _SPAN_SD * sd, _GRID_PER_ARM))
    grid = np.unique(np.concatenate(parts))
    if bounded:
        grid = np.unique(np.clip(np.concatenate((grid, [0.0, 1.0])), 0.0, 1.0))
    return grid


def _pdf(params: tuple[float, float], x: np.ndarray, reward: str) -> np.ndarray:
    if reward == "bernoulli":
        a, b = params
        inner = (x > 0) & (x < 1)
        out = np.zeros_like(x)
        xi = x[inner]
        log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        out[inner] = np.exp(log_norm + (a - 1) * np.log(xi) + (b - 1) * np.log1p(-xi))
        return out
    mean, sd = params
    z = (x - mean) / sd
    return np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


ALL = "*"
"""The one bucket of a bandit without context."""


@dataclass(frozen=True, slots=True)
class Learned:
    """What the learner last published for an endpoint: per context bucket, per arm, its
    rewards (``version`` 0: nothing learned yet, every arm at its prior)."""

    version: int = 0
    buckets: Mapping[str, Stats] = field(default_factory=dict)


NOTHING_LEARNED = Learned()


class Rewards(Protocol):
    """Anything with an arm's reward sums (the control entry's ``ArmRewards``)."""

    @property
    def n(self) -> float: ...
    @property
    def total(self) -> float: ...
    @property
    def squares(self) -> float: ...


def learned_from(version: int, buckets: Mapping[str, Mapping[str, Rewards]]) -> Learned:
    """A ``Learned`` from reward sums per bucket and arm (a ``learned/<endpoint>`` entry's)."""
    return Learned(
        version,
        {
            bucket: {arm: ArmStats(r.n, r.total, r.squares) for arm, r in arms.items()}
            for bucket, arms in buckets.items()
        },
    )


@dataclass(frozen=True, slots=True)
class Draw:
    """The bandit's choice for one request: the arm, its probability, the bucket."""

    arm: str
    propensity: float
    bucket: str
    learned_version: int


def draw(
    arms: Sequence[str],
    bucket: str,
    learned: Learned,
    *,
    u: float,
    reward: str,
    min_share: float,
    champion: str | None,
    champion_floor: float,
) -> Draw:
    """The arm whose slice holds ``u`` (``uniform_draw`` of the request) among the arms'
    probabilities in ``bucket``, with the probability of that draw."""
    probs = arm_probabilities(
        arms,
        learned.buckets.get(bucket, {}),
        reward=reward,
        min_share=min_share,
        champion=champion,
        champion_floor=champion_floor,
    )
    arm = pick(probs, u)
    return Draw(arm, probs[arm], bucket, learned.version)


def ood_bucket(score: float | None, edges: Sequence[float]) -> str:
    """The OOD-score bucket's name: ``ood<e0``, ``ood[e0,e1)``, ..., ``ood>=en``, or
    ``ood?`` when the detector gave no score."""
    if score is None:
        return "ood?"
    if score < edges[0]:
        return f"ood<{edges[0]:g}"
    for low, high in itertools.pairwise(edges):
        if score < high:
            return f"ood[{low:g},{high:g})"
    return f"ood>={edges[-1]:g}"


def attribute_bucket(value: str | None, values: Sequence[str]) -> str:
    """The attribute bucket: the value when listed, else ``other``."""
    return value if value is not None and value in values else "other"

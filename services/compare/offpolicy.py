"""Off-policy estimates from the decision log: the reward a model would have earned had
it answered every request, from requests where the logging policy picked it at random.

Each logged decision gives the model that answered, the probability (propensity) with
which the policy picked that branch, and the reward the client fed back. For the target
policy "always answer with model m", importance weights are ``w_i = 1[chosen_i = m] /
p_i``:

- inverse propensity scoring (IPS): ``mean(w_i * r_i)``, unbiased when the propensities
  are right and every request had a chance of reaching m; its interval comes from the
  sample variance of ``w_i * r_i``;
- self-normalised IPS (SNIPS): ``sum(w_i r_i) / sum(w_i)``, slightly biased, much lower
  variance; its interval from the delta method;
- the effective sample size ``(sum w)^2 / sum w^2``: how many on-policy samples the
  estimate is worth.

Decisions without feedback are left out (the reward is unknown, not zero).

The general form (``evaluate_policy``) takes any target policy as its answer
distribution ``pi(.|x_i)`` per logged request, with weights ``w_i = pi(a_i|x_i) / p_i``
(``a_i`` the logged answer, ``p_i`` the probability with which the logging policy gave
it), and adds the doubly robust estimate ``mean(sum_a pi(a|x_i) q(a) + w_i (r_i -
q(a_i)))`` with a reward model ``q`` (each answer's mean logged reward) fitted on the
other half of the log (two folds, cross-fitted), its interval from the sample variance
of the per-request terms. DR is unbiased when either the propensities or ``q`` are
right, and where the target answers with a model the log rarely shows it leans on ``q``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.compare.intervals import NAN, Z95, Interval, mean_interval


@dataclass(frozen=True, slots=True)
class Logged:
    """One decision with feedback: who answered, with what probability, the reward."""

    chosen: str | None
    propensity: float
    reward: float


@dataclass(frozen=True, slots=True)
class OffPolicy:
    """Estimates of one model's mean reward had it always answered."""

    model: str
    ips: Interval
    snips: Interval
    effective_sample_size: float
    matched: int  # logged decisions where this model answered

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "ips": self.ips.as_dict(),
            "snips": self.snips.as_dict(),
            "effective_sample_size": self.effective_sample_size,
            "matched": self.matched,
        }


def estimate(model: str, log: Iterable[Logged], z: float = Z95) -> OffPolicy:
    """IPS and SNIPS estimates of ``model``'s mean reward over the logged requests."""
    weights: list[float] = []  # w_i over every logged request (0 where another answered)
    rewards: list[float] = []
    for row in log:
        check_propensity(row.propensity)
        weights.append(1.0 / row.propensity if row.chosen == model else 0.0)
        rewards.append(row.reward)
    ips, snips, ess = weighted(weights, rewards, z)
    return OffPolicy(model, ips, snips, ess, sum(w > 0 for w in weights))


def check_propensity(p: float) -> None:
    if not 0.0 < p <= 1.0:
        raise ValueError(f"propensity must be in (0, 1], not {p}")


def weighted(
    weights: Sequence[float], rewards: Sequence[float], z: float = Z95
) -> tuple[Interval, Interval, float]:
    """IPS and SNIPS (with intervals) and the effective sample size from importance
    weights and rewards; undefined (NaN, ESS 0) when no weight is positive."""
    n = len(weights)
    pairs = [(w, r) for w, r in zip(weights, rewards, strict=True) if w > 0]
    if n == 0 or not pairs:
        empty = Interval(NAN, NAN, NAN, n)
        return empty, empty, 0.0
    terms = [w * r for w, r in zip(weights, rewards, strict=True)]
    ips = math.fsum(terms) / n
    var = math.fsum((t - ips) ** 2 for t in terms) / max(n - 1, 1)
    half = z * math.sqrt(var / n)
    sum_w = math.fsum(w for w, _ in pairs)
    snips = math.fsum(w * r for w, r in pairs) / sum_w
    # delta method: Var(SNIPS) ~ sum(w_i^2 (r_i - snips)^2) / (sum w)^2, zero-weight rows add 0
    snips_var = math.fsum(w * w * (r - snips) ** 2 for w, r in pairs) / (sum_w * sum_w)
    snips_half = z * math.sqrt(snips_var)
    ess = sum_w * sum_w / math.fsum(w * w for w, _ in pairs)
    return (
        Interval(ips, ips - half, ips + half, n),
        Interval(snips, snips - snips_half, snips + snips_half, n),
        ess,
    )


Answer = str | None  # a model, or None for the default answer


@dataclass(frozen=True, slots=True)
class Replayed:
    """One logged decision with feedback and a target policy's answer distribution for
    it: ``target[a]`` = pi(a|x) (answers it never gives may be left out)."""

    chosen: Answer
    propensity: float  # the logging policy's probability of ``chosen``
    reward: float
    target: Mapping[Answer, float]
    fold: int = 0  # cross-fitting fold of the reward model: 0 or 1

    @property
    def weight(self) -> float:
        return self.target.get(self.chosen, 0.0) / self.propensity


@dataclass(frozen=True, slots=True)
class PolicyEstimate:
    """A target policy's estimated mean reward over the logged requests."""

    ips: Interval
    snips: Interval
    dr: Interval
    effective_sample_size: float
    matched: int  # logged requests the target could have answered as logged (w > 0)

    def as_dict(self) -> dict[str, object]:
        return {
            "ips": self.ips.as_dict(),
            "snips": self.snips.as_dict(),
            "dr": self.dr.as_dict(),
            "effective_sample_size": self.effective_sample_size,
            "matched": self.matched,
        }


def evaluate_policy(rows: Sequence[Replayed], z: float = Z95) -> PolicyEstimate:
    """IPS, SNIPS and cross-fitted DR estimates (95% intervals by default) of the target
    policy whose answer distributions ``rows`` carry."""
    for row in rows:
        check_propensity(row.propensity)
    weights = [row.weight for row in rows]
    ips, snips, ess = weighted(weights, [row.reward for row in rows], z)
    dr = doubly_robust(rows, z)
    return PolicyEstimate(ips, snips, dr, ess, sum(w > 0 for w in weights))


def reward_model(rows: Iterable[Replayed]) -> tuple[dict[Answer, float], float]:
    """Per logged answer, its mean reward; and the mean over all rows (for answers the
    rows never show). Empty rows give ({}, 0.0)."""
    sums: dict[Answer, list[float]] = {}
    for row in rows:
        sums.setdefault(row.chosen, []).append(row.reward)
    every = [r for rs in sums.values() for r in rs]
    overall = math.fsum(every) / len(every) if every else 0.0
    return {a: math.fsum(rs) / len(rs) for a, rs in sums.items()}, overall


def doubly_robust(rows: Sequence[Replayed], z: float = Z95) -> Interval:
    """The DR estimate with ``q`` fitted on the other fold (the one fold's own rows when
    the other is empty), its interval from the per-request terms' sample variance."""
    fitted = {}
    for fold in (0, 1):
        other = [row for row in rows if row.fold != fold]
        fitted[fold] = reward_model(other or [row for row in rows if row.fold == fold])
    terms = []
    for row in rows:
        q, overall = fitted[row.fold]
        direct = math.fsum(p * q.get(a, overall) for a, p in row.target.items())
        terms.append(direct + row.weight * (row.reward - q.get(row.chosen, overall)))
    return mean_interval(terms, z)

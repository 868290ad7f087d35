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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from services.compare.intervals import NAN, Z95, Interval


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
    terms: list[float] = []  # w_i * r_i over every logged request
    weights: list[tuple[float, float]] = []  # (w_i, r_i) where the model answered
    for row in log:
        if not 0.0 < row.propensity <= 1.0:
            raise ValueError(f"propensity must be in (0, 1], not {row.propensity}")
        if row.chosen == model:
            w = 1.0 / row.propensity
            weights.append((w, row.reward))
            terms.append(w * row.reward)
        else:
            terms.append(0.0)
    n = len(terms)
    if n == 0 or not weights:
        empty = Interval(NAN, NAN, NAN, n)
        return OffPolicy(model, empty, empty, 0.0, len(weights))
    ips = math.fsum(terms) / n
    var = math.fsum((t - ips) ** 2 for t in terms) / max(n - 1, 1)
    half = z * math.sqrt(var / n)
    sum_w = math.fsum(w for w, _ in weights)
    snips = math.fsum(w * r for w, r in weights) / sum_w
    # delta method: Var(SNIPS) ~ sum(w_i^2 (r_i - snips)^2) / (sum w)^2, zero-weight rows add 0
    snips_var = math.fsum(w * w * (r - snips) ** 2 for w, r in weights) / (sum_w * sum_w)
    snips_half = z * math.sqrt(snips_var)
    ess = sum_w * sum_w / math.fsum(w * w for w, _ in weights)
    return OffPolicy(
        model,
        Interval(ips, ips - half, ips + half, n),
        Interval(snips, snips - snips_half, snips + snips_half, n),
        ess,
        len(weights),
    )

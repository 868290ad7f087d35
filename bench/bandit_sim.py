"""The bandit stage simulated through the rendezvous's own decide(): known reward rates per
model (and context bucket), Bernoulli feedback, the learned state refreshed in batches
as the learner publishes it; regret, share on the best arm, reward per policy."""

from __future__ import annotations

import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.common.arrivals import Arrived, RequestSnapshot
from services.common.bandit import ALL, ArmStats, Learned
from services.common.decide import decide
from services.common.messages import ScoreStatus
from services.common.policy import Policy, parse_policy

Rates = Mapping[str, Mapping[str, float]]
"""Context bucket -> model -> probability of reward 1."""

THREE_ARMS: Rates = {ALL: {"a": 0.50, "b": 0.55, "c": 0.60}}
CONTEXTUAL: Rates = {
    "free": {"a": 0.60, "b": 0.50, "c": 0.45},
    "pro": {"a": 0.40, "b": 0.55, "c": 0.65},
}


def bandit_policy(
    arms: Sequence[str], *, min_share: float = 0.01, context: Sequence[str] | None = None
) -> Policy:
    """A bench endpoint whose first stage draws among ``arms`` (per ``tier`` attribute
    bucket when ``context`` lists the tiers)."""
    spec: dict[str, object] = {"reward": "bernoulli", "min_share": min_share}
    if context is not None:
        spec["context"] = {"attribute": "tier", "values": list(context)}
    doc = {
        "endpoint": "bench",
        "deadline_ms": 1000,
        "models": list(arms),
        "stages": [
            {"until_ms": 800, "accept": list(arms), "pick": "bandit"},
            {"until_ms": "deadline", "accept": "any"},
        ],
        "bandit": spec,
    }
    return parse_policy(doc, "bench.bandit")


@dataclass
class Run:
    """One simulated run: per request the bucket, the chosen model and the propensity."""

    buckets: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    propensities: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


def simulate(policy: Policy, rates: Rates, n: int, *, batch: int = 100, seed: int = 0) -> Run:
    """``n`` requests, buckets drawn uniformly; the learned state is refreshed every
    ``batch`` feedback records (the learner's delay)."""
    rng = random.Random(seed)
    arms = next(iter(rates.values())).keys()
    stats: dict[str, dict[str, ArmStats]] = {}
    learned = Learned()
    run = Run()
    tiers = list(rates)
    for i in range(n):
        tier = rng.choice(tiers)
        attributes = {} if tier == ALL else {"tier": tier}
        scores = {m: Arrived(ScoreStatus.OK, 5.0, output=m) for m in arms}
        request = RequestSnapshot(f"s{seed}-{i}", 0.0, 1000.0, scores, attributes=attributes)
        verdict = decide(request, policy, 10.0, learned)
        assert verdict is not None
        assert verdict.chosen_model is not None
        assert verdict.draw
        model = verdict.chosen_model
        reward = 1.0 if rng.random() < rates[tier][model] else 0.0
        bucket = stats.setdefault(verdict.draw.bucket, {})
        bucket[model] = bucket.get(model, ArmStats()).add(reward)
        if (i + 1) % batch == 0:
            learned = Learned(learned.version + 1, {b: dict(a) for b, a in stats.items()})
        run.buckets.append(tier)
        run.chosen.append(model)
        run.propensities.append(verdict.propensity)
        run.rewards.append(reward)
    return run


def expected(rates: Rates, run: Run) -> float:
    """The mean expected reward of the run's choices (noise-free)."""
    return statistics.fmean(rates[b][m] for b, m in zip(run.buckets, run.chosen, strict=True))


def best_fixed(rates: Rates) -> tuple[str, float]:
    """The single model with the highest reward over the buckets (equally likely)."""
    models = next(iter(rates.values())).keys()
    means = {m: statistics.fmean(r[m] for r in rates.values()) for m in models}
    best = max(means, key=means.__getitem__)
    return best, means[best]


def oracle(rates: Rates) -> float:
    """The reward of the best model per bucket."""
    return statistics.fmean(max(r.values()) for r in rates.values())


def uniform(rates: Rates) -> float:
    """The reward of a uniform random choice."""
    return statistics.fmean(statistics.fmean(r.values()) for r in rates.values())


def share_on(run: Run, model: str, start: int, end: int) -> float:
    window = run.chosen[start:end]
    return window.count(model) / len(window) if window else 0.0


def three_arms(repeats: int, n: int = 5000, batch: int = 100) -> dict[str, object]:
    """Arms 0.50 / 0.55 / 0.60: share on the best arm and regret against uniform."""
    policy = bandit_policy(["a", "b", "c"])
    best, best_mean = best_fixed(THREE_ARMS)
    last, regrets, first90 = [], [], []
    for seed in range(repeats):
        run = simulate(policy, THREE_ARMS, n, batch=batch, seed=seed)
        last.append(share_on(run, best, n - 1000, n))
        regrets.append(n * (best_mean - expected(THREE_ARMS, run)))
        first90.append(_first_window(run, best, 500, 0.9))
    uniform_regret = n * (best_mean - uniform(THREE_ARMS))
    return {
        "requests": n,
        "repeats": repeats,
        "learned_every": batch,
        "best_share_last_1000": _spread(last),
        "requests_until_500_window_90pct": _spread([x for x in first90 if x is not None]),
        "runs_reaching_90pct": sum(x is not None for x in first90),
        "regret": _spread(regrets),
        "uniform_regret": uniform_regret,
        "regret_ratio_to_uniform": _spread([r / uniform_regret for r in regrets]),
    }


def contextual(repeats: int, n: int = 5000, batch: int = 100) -> dict[str, object]:
    """Buckets whose best model differs: contextual vs context-free stage vs best model."""
    with_context = bandit_policy(["a", "b", "c"], context=list(CONTEXTUAL))
    without = bandit_policy(["a", "b", "c"])
    ctx, flat = [], []
    for seed in range(repeats):
        ctx.append(
            expected(CONTEXTUAL, simulate(with_context, CONTEXTUAL, n, batch=batch, seed=seed))
        )
        flat.append(expected(CONTEXTUAL, simulate(without, CONTEXTUAL, n, batch=batch, seed=seed)))
    model, mean = best_fixed(CONTEXTUAL)
    return {
        "requests": n,
        "repeats": repeats,
        "contextual_reward": _spread(ctx),
        "context_free_reward": _spread(flat),
        "best_single_model": model,
        "best_single_model_reward": mean,
        "oracle_reward": oracle(CONTEXTUAL),
        "uniform_reward": uniform(CONTEXTUAL),
        "runs_beating_best_model": sum(x > mean for x in ctx),
    }


def _first_window(run: Run, model: str, width: int, share: float) -> int | None:
    """The end of the first ``width``-request window with at least ``share`` on model."""
    hits = [1 if m == model else 0 for m in run.chosen]
    total = sum(hits[:width])
    for end in range(width, len(hits) + 1):
        if total >= share * width:
            return end
        if end < len(hits):
            total += hits[end] - hits[end - width]
    return None


def _spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated runs."""
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }

"""Simulated checks of off-policy evaluation and of the sequential promotion gate: pure
Python, no Kafka, seconds per figure.

    python -m bench.gate_sim            # all three figures, about a minute
    python -m bench.gate_sim --quick    # fewer runs, a smoke test

(a) ``ope_coverage``: 100 simulated logs of an epsilon-greedy logger over three models
    with known reward rates and known propensities; a deterministic candidate policy (a
    real ``Policy``: b if it answers within 150 ms, else c or a, whichever is first)
    is replayed on each logged request with the real ``decide`` (through
    ``services.compare.evaluate.target_distribution``) and estimated with IPS, SNIPS
    and DR; the figure is how many 95% intervals cover its true mean reward (from
    50,000 fresh requests: the expected reward of the answer decide picks).
(b) ``false_promotions``: 200 A/A runs (two identical models: 2% errors, half of the
    requests within the deadline) through ``services.compare.gate.judge``, checked
    after every 100 requests up to the horizon: the share that ever promoted (or
    rejected).
(c) ``time_to_promote``: the same with the challenger 5 points better on the
    within-deadline rate (0.50 against 0.55): the requests until promotion (median,
    p90) and the power at the horizon.

The machine is printed first; the last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from statistics import NormalDist

from bench.chaos_report import machine
from services.common.arrivals import Arrived, RequestSnapshot
from services.common.messages import MODEL_ERROR, ErrorBody, ScoreStatus
from services.common.policy import Policy, parse_policy
from services.compare.evaluate import fold_of, target_distribution
from services.compare.gate import PROMOTE, REJECT, WAIT, GateConfig, Tally, judge
from services.compare.offpolicy import Replayed, evaluate_policy

# -- (a) off-policy evaluation ------------------------------------------------------------

MODELS = ("a", "b", "c")
RATES = {"a": 0.50, "b": 0.65, "c": 0.40}  # reward probability of each model's answer
MEDIAN_MS = {"a": 60.0, "b": 140.0, "c": 90.0}
ERRORS = {"a": 0.0, "b": 0.05, "c": 0.10}
SIGMA = 0.5  # log-normal spread of every model's latency
DEADLINE_MS = 1000
EPSILON = 0.3  # the logger: "a", or with this probability a model drawn uniformly
CANDIDATE = {
    "endpoint": "sim",
    "deadline_ms": DEADLINE_MS,
    "models": list(MODELS),
    "stages": [
        {"until_ms": 150, "accept": ["b"]},
        {"until_ms": "deadline", "accept": ["c", "a"]},
    ],
}
_ERROR = ErrorBody(code=MODEL_ERROR, message="simulated")


def candidate_policy() -> Policy:
    return parse_policy(CANDIDATE, "bench.gate_sim")


def request(rng: random.Random, rid: str) -> RequestSnapshot:
    """One simulated request: every model's score at a log-normal latency."""
    scores = {}
    for model in MODELS:
        at = rng.lognormvariate(math.log(MEDIAN_MS[model]), SIGMA)
        failed = rng.random() < ERRORS[model]
        status = ScoreStatus.ERROR if failed else ScoreStatus.OK
        scores[model] = Arrived(
            status, at, None if failed else model, error=_ERROR if failed else None
        )
    ordered = dict(sorted(scores.items(), key=lambda kv: kv[1].at_ms))
    return RequestSnapshot(rid, 0.0, float(DEADLINE_MS), ordered)


def logger(rng: random.Random) -> tuple[str, float]:
    """The logging policy's answer and its probability."""
    model = rng.choice(MODELS) if rng.random() < EPSILON else "a"
    p = EPSILON / len(MODELS) + (1.0 - EPSILON if model == "a" else 0.0)
    return model, p


def reward(rng: random.Random, snapshot: RequestSnapshot, model: str | None) -> float:
    """Bernoulli with the model's rate when its answer was ok; 0 otherwise."""
    if model is None or snapshot.scores[model].status is not ScoreStatus.OK:
        return 0.0
    return 1.0 if rng.random() < RATES[model] else 0.0


def expected(snapshot: RequestSnapshot, dist: dict[str | None, float]) -> float:
    return math.fsum(
        p * RATES[m]
        for m, p in dist.items()
        if m is not None and snapshot.scores[m].status is ScoreStatus.OK
    )


def true_value(policy: Policy, n: int = 50_000, seed: int = 10_000) -> float:
    rng = random.Random(seed)
    total = [
        expected(s, target_distribution(s, policy))
        for s in (request(rng, f"t{i}") for i in range(n))
    ]
    return math.fsum(total) / n


def ope_coverage(runs: int = 100, n: int = 2000, seed: int = 0) -> dict[str, object]:
    """(a): coverage of the candidate's true mean reward by the 95% intervals."""
    policy = candidate_policy()
    truth = true_value(policy)
    covered = {"ips": 0, "snips": 0, "dr": 0}
    widths: dict[str, list[float]] = {k: [] for k in covered}
    ess = []
    for run in range(runs):
        rng = random.Random(seed * 1_000_003 + run)
        rows = []
        for i in range(n):
            rid = f"r{run}-{i}"
            snap = request(rng, rid)
            chosen, p = logger(rng)
            rows.append(
                Replayed(
                    chosen,
                    p,
                    reward(rng, snap, chosen),
                    target_distribution(snap, policy),
                    fold_of(rid),
                )
            )
        est = evaluate_policy(rows)
        for name, interval in (("ips", est.ips), ("snips", est.snips), ("dr", est.dr)):
            covered[name] += interval.low <= truth <= interval.high
            widths[name].append(interval.high - interval.low)
        ess.append(est.effective_sample_size)
    return {
        "runs": runs,
        "requests_per_run": n,
        "true_value": round(truth, 4),
        "covered": covered,
        "median_width": {k: round(statistics.median(v), 4) for k, v in widths.items()},
        "median_ess": round(statistics.median(ess), 1),
    }


# -- (b), (c) the sequential gate ---------------------------------------------------------

GATE_DEADLINE_MS = 100.0
OK_RATE = 0.98


def _median_for(within: float) -> float:
    """The latency median that puts ``within`` of all requests ok and in time."""
    z = NormalDist().inv_cdf(within / OK_RATE)
    return GATE_DEADLINE_MS / math.exp(SIGMA * z)


def _side(rng: random.Random, median: float) -> tuple[str, float | None]:
    if rng.random() >= OK_RATE:
        return "error", None
    return "ok", rng.lognormvariate(math.log(median), SIGMA)


def gate_run(
    rng: random.Random,
    champion_within: float,
    challenger_within: float,
    horizon: int,
    every: int,
    config: GateConfig,
) -> tuple[str, int]:
    """One run checked after every ``every`` requests: (decision, requests at it); the
    decision is ``wait`` when the horizon came first."""
    a_median, b_median = _median_for(champion_within), _median_for(challenger_within)
    tally = Tally()
    for n in range(1, horizon + 1):
        tally.add_pair(GATE_DEADLINE_MS, _side(rng, a_median), _side(rng, b_median))
        if n % every == 0:
            decision = judge(tally, config).decision
            if decision != WAIT:
                return decision, n
    return WAIT, horizon


def false_promotions(
    runs: int = 200, horizon: int = 10_000, every: int = 100, seed: int = 1, alpha: float = 0.05
) -> dict[str, object]:
    """(b): A/A runs; the share that ever promoted or rejected."""
    config = GateConfig(alpha=alpha)
    outcomes = [
        gate_run(random.Random(seed * 1_000_003 + r), 0.50, 0.50, horizon, every, config)[0]
        for r in range(runs)
    ]
    return {
        "runs": runs,
        "horizon": horizon,
        "checked_every": every,
        "alpha": alpha,
        "promoted": outcomes.count(PROMOTE),
        "rejected": outcomes.count(REJECT),
        "false_promotion_rate": outcomes.count(PROMOTE) / runs,
    }


def time_to_promote(
    runs: int = 200,
    horizon: int = 10_000,
    every: int = 100,
    seed: int = 2,
    base: float = 0.50,
    lift: float = 0.05,
    alpha: float = 0.05,
) -> dict[str, object]:
    """(c): the challenger ``lift`` better on the within-deadline rate."""
    config = GateConfig(alpha=alpha)
    results = [
        gate_run(random.Random(seed * 1_000_003 + r), base, base + lift, horizon, every, config)
        for r in range(runs)
    ]
    at = sorted(n for decision, n in results if decision == PROMOTE)
    return {
        "runs": runs,
        "horizon": horizon,
        "checked_every": every,
        "within_deadline": [base, base + lift],
        "power": len(at) / runs,
        "rejected": sum(d == REJECT for d, _ in results),
        "median_requests": statistics.median(at) if at else None,
        "p90_requests": at[min(len(at) - 1, math.ceil(0.9 * len(at)) - 1)] if at else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    args = parser.parse_args(argv)
    print("machine:", json.dumps(machine()))
    scale = 5 if args.quick else 1
    out: dict[str, object] = {}
    figures: list[tuple[str, Callable[[], dict[str, object]]]] = [
        ("ope_coverage", lambda: ope_coverage(runs=100 // scale)),
        ("false_promotions", lambda: false_promotions(runs=200 // scale)),
        ("time_to_promote", lambda: time_to_promote(runs=200 // scale)),
    ]
    for name, figure in figures:
        start = time.perf_counter()
        out[name] = figure()
        print(f"{name} ({time.perf_counter() - start:.1f} s):", json.dumps(out[name]))
    out["machine"] = machine()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

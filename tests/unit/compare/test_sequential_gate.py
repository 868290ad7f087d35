"""The always-valid confidence sequence and the promotion gate on simulated streams
whose truth is known: type-I error when checked every 100 requests, power, the calls,
and the gate's tally of an archive."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from services.common.archive_files import connect
from services.common.arrivals import RequestSnapshot
from services.common.decide import in_canary
from services.common.policy import parse_policy
from services.compare.gate import (
    ERROR_RATE,
    LATENCY,
    PROMOTE,
    REJECT,
    REWARD,
    WAIT,
    WITHIN_DEADLINE,
    GateConfig,
    Tally,
    Window,
    judge,
    tally_archive,
)
from services.compare.sequential import (
    Call,
    Direction,
    Running,
    call,
    confidence_sequence,
    rho_squared,
)
from tests.factories import policy_doc
from tests.unit.compare.archive_rows import ArchiveRows


def test_the_boundary_matches_the_formula_and_the_e_value_agrees_with_it() -> None:
    stats = Running().extend([0.0, 1.0] * 50)  # n 100, mean 0.5, sd ~0.5025
    seq = confidence_sequence(stats, alpha=0.05, tuned_n=100)
    rho2 = (-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 100
    assert rho_squared(0.05, 100) == pytest.approx(rho2)
    g = 100 * rho2 + 1
    radius = stats.sd * math.sqrt(2 * g / (100**2 * rho2) * math.log(math.sqrt(g) / 0.05))
    assert (seq.low, seq.high) == pytest.approx((0.5 - radius, 0.5 + radius))
    rng = random.Random(5)
    for _ in range(200):  # e-value >= 1/alpha exactly when the sequence excludes 0
        shift = rng.uniform(-0.3, 0.3)
        s = confidence_sequence(Running().extend(rng.gauss(shift, 1) for _ in range(150)))
        assert (s.e_value >= 1 / 0.05) == (s.low > 0 or s.high < 0)
        assert (s.p_value <= 0.05) == (s.e_value >= 20)
    assert math.isnan(confidence_sequence(Running().extend([1.0])).low)
    with pytest.raises(ValueError, match="alpha"):
        confidence_sequence(stats, alpha=1.0)


def test_calls_follow_the_direction_and_the_margin() -> None:
    up = confidence_sequence(Running().extend([0.2, 0.3] * 100))  # clearly above 0
    assert call(up, Direction(higher=True)) is Call.BETTER
    assert call(up, Direction(higher=False)) is Call.WORSE
    assert call(up, Direction(higher=False, margin=1.0)) is Call.UNDECIDED  # within the margin
    assert call(up, Direction(higher=True), min_n=1000) is Call.UNDECIDED  # too early


def _paired_run(rng: random.Random, a: float, b: float, horizon: int, config: GateConfig) -> str:
    """Within-deadline Bernoulli(a) against Bernoulli(b) (no errors, 10 ms against
    10 ms), checked after every 100 requests: the first decision, or wait."""
    tally = Tally()
    for n in range(1, horizon + 1):
        a_in, b_in = rng.random() < a, rng.random() < b
        champion = ("ok", 10.0 * rng.uniform(0.5, 1.5) if a_in else 5000.0)
        challenger = ("ok", 10.0 * rng.uniform(0.5, 1.5) if b_in else 5000.0)
        tally.add_pair(1000.0, champion, challenger)
        if n % 100 == 0 and (decision := judge(tally, config).decision) != WAIT:
            return decision
    return WAIT


def test_a_a_false_promotions_stay_within_alpha_when_checked_every_100_requests() -> None:
    config = GateConfig(alpha=0.05)
    outcomes = [_paired_run(random.Random(r), 0.5, 0.5, 3000, config) for r in range(200)]
    # alpha 5% over 200 runs: 10 expected at most; allow sampling noise (+2 points)
    assert outcomes.count(PROMOTE) <= 14
    assert outcomes.count(PROMOTE) + outcomes.count(REJECT) <= 14


def test_a_five_point_better_challenger_is_promoted_and_a_worse_one_rejected() -> None:
    config = GateConfig(alpha=0.05)
    better = [_paired_run(random.Random(r), 0.50, 0.55, 8000, config) for r in range(40)]
    assert better.count(PROMOTE) >= 32  # power >= 80% by 8,000 requests
    assert better.count(REJECT) == 0
    worse = [_paired_run(random.Random(r), 0.55, 0.45, 4000, config) for r in range(20)]
    assert worse.count(REJECT) >= 18


def test_judge_rejects_on_any_worse_metric_and_promotes_on_non_inferiority() -> None:
    rng = random.Random(3)
    tally = Tally()
    for _ in range(2000):  # same within-deadline; the challenger errs far more often
        b_status = "error" if rng.random() < 0.2 else "ok"
        tally.add_pair(1000.0, ("ok", 10.0), (b_status, 10.0 if b_status == "ok" else None))
    result = judge(tally)
    assert result.decision == REJECT
    assert {m.metric for m in result.worse()} >= {ERROR_RATE, WITHIN_DEADLINE}
    same = Tally()
    for _ in range(3000):
        lat = rng.uniform(5, 15)
        same.add_pair(1000.0, ("ok", lat), ("ok", lat * rng.uniform(0.99, 1.01)))
    assert judge(same).decision == WAIT  # no difference: never "better"
    assert judge(same, GateConfig(non_inferiority=0.01)).decision == PROMOTE
    latency = next(m for m in judge(same).metrics if m.metric == LATENCY)
    assert latency.champion == pytest.approx(latency.challenger, rel=0.01)  # geometric means


CANARY_POLICY = policy_doc(canary={"model": "slow", "share": 0.3}, version=4)


def test_the_archive_is_tallied_with_the_canary_branch_as_the_reward_contrast(
    tmp_path: Path,
) -> None:
    policy = parse_policy(CANARY_POLICY, "test")
    rows, branches = ArchiveRows(), []
    for i in range(300):
        rid = f"r{i}"
        rows.request(rid, at=i, attributes={"user": f"u{i}"})
        rows.score(rid, "fast", 10.0, at=i, role="champion")
        rows.score(rid, "slow", 2000.0 if i % 2 else 20.0, at=i)  # late on half
        inside = in_canary(RequestSnapshot(rid, 0.0, 0.0), policy)
        branches.append(inside)
        rows.decision(
            rid, "slow" if inside else "fast", propensity=0.3 if inside else 0.7, version=4
        )
        rows.feedback(rid, 1.0 if inside else 0.0)
    rows.request("other-version", at=400)
    rows.decision("other-version", "fast", version=3)
    rows.feedback("other-version", 1.0)
    con = connect(rows.write(tmp_path))
    tally = tally_archive(con, Window("demo", "fast", "slow"), policy)
    con.close()
    assert tally.diff[WITHIN_DEADLINE].n == 300
    assert tally.diff[WITHIN_DEADLINE].mean == pytest.approx(-0.5)  # slow late on half
    assert tally.diff[REWARD].n == 300  # the other version's decision is left out
    canaried = sum(branches)
    assert 60 < canaried < 120  # ~30% in the canary branch
    assert tally.diff[REWARD].mean == pytest.approx(canaried / 0.3 / 300)
    assert tally.challenger[REWARD].mean == 1.0
    assert tally.champion[REWARD].mean == 0.0
    result = judge(tally)
    assert result.primary == REWARD
    assert result.decision == REJECT  # better reward, but late on half the requests


def test_bandit_arms_are_compared_on_their_inverse_propensity_rewards(tmp_path: Path) -> None:
    policy = parse_policy(
        policy_doc(
            stages=[
                {"until_ms": 500, "accept": ["fast", "slow"], "pick": "bandit"},
                {"until_ms": "deadline", "accept": "any"},
            ],
            bandit={"min_share": 0.1},
            version=5,
        ),
        "bandit",
    )
    rows, rng, terms = ArchiveRows(), random.Random(3), []
    for i in range(400):
        rid = f"b{i}"
        rows.request(rid, at=i)
        rows.score(rid, "fast", 10.0, at=i, role="champion")
        rows.score(rid, "slow", 12.0, at=i)
        p_slow = 0.8 if i >= 100 else 0.5  # the draw's probability moves as it learns
        slow = rng.random() < p_slow
        p = p_slow if slow else 1 - p_slow
        reward = float(rng.random() < (0.7 if slow else 0.4))
        rows.decision(rid, "slow" if slow else "fast", propensity=p, version=5, reason="bandit")
        rows.feedback(rid, reward)
        terms.append((1 if slow else -1) * reward / p)
    rows.request("fallback", at=500)  # answered by a later stage: not a bandit answer
    rows.decision("fallback", "fast", version=5, reason="fallback:1")
    rows.feedback("fallback", 1.0)
    con = connect(rows.write(tmp_path))
    tally = tally_archive(con, Window("demo", "fast", "slow"), policy)
    con.close()
    assert tally.diff[REWARD].n == 400
    assert tally.diff[REWARD].mean == pytest.approx(sum(terms) / 400)
    assert 0.1 < tally.diff[REWARD].mean < 0.5  # the truth: 0.7 - 0.4
    assert judge(tally).primary == REWARD

"""The bandit stage: Thompson-sampling probabilities against Monte Carlo, guard rails,
stable draws, the policy's checks, and decide() with a bandit stage."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.common import bandit
from services.common.arrivals import Arrived, Grant, RequestSnapshot
from services.common.bandit import ArmStats, Learned, arm_probabilities, guard
from services.common.decide import BANDIT, CHAMPION_IN_TIME, decide, fallback_reason, stream_grant
from services.common.errors import ConfigError
from services.common.messages import ErrorBody, ScoreStatus
from services.common.policy import Policy, parse_policy

ARMS = ["a", "b", "c"]


def _monte_carlo(stats: dict[str, ArmStats], reward: str, n: int = 1_000_000) -> np.ndarray:
    rng = np.random.default_rng(7)
    draws = []
    for s in stats.values():
        if reward == "bernoulli":
            draws.append(rng.beta(1 + s.total, 1 + s.n - s.total, n))
        else:
            mean = s.total / s.n
            var = (s.squares - s.n * mean * mean) / (s.n - 1)
            draws.append(rng.normal(mean, np.sqrt(var / s.n), n))
    return np.bincount(np.stack(draws).argmax(0), minlength=len(stats)) / n


@pytest.mark.parametrize(
    "stats",
    [
        {"a": ArmStats(), "b": ArmStats(), "c": ArmStats()},
        {"a": ArmStats(10, 5), "b": ArmStats(12, 7), "c": ArmStats(3, 2)},
        {"a": ArmStats(800, 400), "b": ArmStats(820, 451), "c": ArmStats(900, 540)},
        {"a": ArmStats(50_000, 25_000), "b": ArmStats(40, 22), "c": ArmStats(200, 121)},
    ],
)
def test_bernoulli_probabilities_match_a_million_draws(stats: dict[str, ArmStats]) -> None:
    exact = arm_probabilities(ARMS, stats)
    mc = _monte_carlo(stats, "bernoulli")
    # a million draws: the Monte Carlo figure itself is within 0.0015 (3 sd) of the truth
    assert [exact[a] for a in ARMS] == pytest.approx(list(mc), abs=0.003)
    assert sum(exact.values()) == pytest.approx(1.0)


def test_gaussian_probabilities_match_a_million_draws() -> None:
    def arm(n: int, mean: float, sd: float) -> ArmStats:
        return ArmStats(n, n * mean, n * (sd * sd * (n - 1) / n + mean * mean))

    stats = {"a": arm(50, 1.0, 1.0), "b": arm(60, 1.1, 1.2), "c": arm(30, 0.9, 0.5)}
    exact = arm_probabilities(ARMS, stats, reward="gaussian")
    mc = _monte_carlo(stats, "gaussian")
    assert [exact[a] for a in ARMS] == pytest.approx(list(mc), abs=0.003)


def test_an_arm_without_rewards_is_tried() -> None:
    stats = {"a": ArmStats(1000, 600), "b": ArmStats(1000, 500)}
    assert arm_probabilities(["a", "b", "c"], stats)["c"] > 0.3  # Beta(1, 1) vs ~0.6
    gaussian = {"a": ArmStats(10, 10, 11), "b": ArmStats(10, 5, 3)}
    assert arm_probabilities(["a", "b", "c"], gaussian, reward="gaussian")["c"] > 0.3


def test_guard_rails_keep_every_arm_and_the_champion() -> None:
    stats = {"a": ArmStats(5000, 2500), "b": ArmStats(5000, 3000), "c": ArmStats(5000, 2400)}
    free = arm_probabilities(ARMS, stats)
    assert free["a"] < 0.001
    assert free["b"] > 0.99
    kept = arm_probabilities(ARMS, stats, min_share=0.05, champion="a", champion_floor=0.3)
    assert kept["a"] == pytest.approx(0.3)
    assert kept["c"] >= 0.05 - 1e-12
    assert sum(kept.values()) == pytest.approx(1.0)
    # an already large champion share is left as it is
    assert guard({"a": 0.8, "b": 0.2}, 0.0, "a", 0.3) == pytest.approx({"a": 0.8, "b": 0.2})


def test_the_draw_is_stable_and_follows_the_probabilities() -> None:
    u = bandit.uniform_draw("demo", 1, "r-1")
    assert u == bandit.uniform_draw("demo", 1, "r-1")
    assert u != bandit.uniform_draw("demo", 2, "r-1")
    probs = {"a": 0.2, "b": 0.5, "c": 0.3}
    picks = [bandit.pick(probs, bandit.uniform_draw("demo", 1, f"r-{i}")) for i in range(20_000)]
    for arm, p in probs.items():
        assert picks.count(arm) / len(picks) == pytest.approx(p, abs=0.015)


def test_buckets() -> None:
    assert bandit.ood_bucket(None, (0.5,)) == "ood?"
    assert bandit.ood_bucket(0.2, (0.5, 1.0)) == "ood<0.5"
    assert bandit.ood_bucket(0.7, (0.5, 1.0)) == "ood[0.5,1)"
    assert bandit.ood_bucket(3.0, (0.5, 1.0)) == "ood>=1"
    assert bandit.attribute_bucket("pro", ("free", "pro")) == "pro"
    assert bandit.attribute_bucket("vip", ("free", "pro")) == "other"
    assert bandit.attribute_bucket(None, ("free", "pro")) == "other"


# -- the policy -----------------------------------------------------------------------


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "endpoint": "demo",
        "deadline_ms": 1000,
        "models": ["a", "b", "c", "safe"],
        "stages": [
            {"until_ms": 500, "accept": ["a", "b", "c"], "pick": "bandit"},
            {"until_ms": "deadline", "accept": ["safe"]},
        ],
        "bandit": {"reward": "bernoulli", "min_share": 0.02},
    }
    doc.update(over)
    return doc


def _policy(**over: Any) -> Policy:
    return parse_policy(_doc(**over), "test")


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"bandit": None}, "needs 'bandit'"),
        (
            {"stages": [{"until_ms": "deadline", "accept": ["a", "b"]}]},
            "no stage has pick: bandit",
        ),
        (
            {
                "stages": [
                    {"until_ms": 100, "accept": ["a", "b"], "pick": "bandit"},
                    {"until_ms": "deadline", "accept": ["a", "c"], "pick": "bandit"},
                ]
            },
            "at most one stage",
        ),
        (
            {"stages": [{"until_ms": "deadline", "accept": "any", "pick": "bandit"}]},
            "two or more models",
        ),
        ({"bandit": {"min_share": 0.4}}, "min_share"),
        ({"bandit": {"champion": "safe"}}, "is not an arm"),
        ({"bandit": {"champion_floor": 0.5}}, "needs a champion"),
        (
            {"bandit": {"min_share": 0.3, "champion": "a", "champion_floor": 0.5}},
            "champion_floor",
        ),
        ({"bandit": {"context": {"attribute": "tier"}}}, "needs its 'values'"),
        ({"bandit": {"context": {"ood_score": [0.5]}}}, "needs the policy's ood gate"),
        ({"bandit": {"context": {"ood_score": [0.5, 0.2]}}}, "must increase"),
        ({"bandit": {"rewards": "bernoulli"}}, "rewards"),
    ],
)
def test_the_policy_refuses_a_bad_bandit(over: dict[str, Any], message: str) -> None:
    doc = _doc(**over)
    if doc.get("bandit") is None:
        del doc["bandit"]
    with pytest.raises(ConfigError, match=message):
        parse_policy(doc, "test")


# -- decide -----------------------------------------------------------------------------


def _ok(at: float) -> Arrived:
    return Arrived(ScoreStatus.OK, at, output={"text": "x"})


def _failed(at: float) -> Arrived:
    return Arrived(ScoreStatus.ERROR, at, error=ErrorBody(code="model_error", message="boom"))


def _request(rid: str, scores: dict[str, Arrived], **kw: Any) -> RequestSnapshot:
    return RequestSnapshot(rid, 0.0, 1000.0, scores, **kw)


def _all_ok() -> dict[str, Arrived]:
    return {m: _ok(10.0) for m in ("a", "b", "c", "safe")}


def test_only_the_drawn_arm_answers_with_its_probability() -> None:
    policy = _policy()
    counts = dict.fromkeys(ARMS, 0)
    for i in range(3000):
        verdict = decide(_request(f"r{i}", _all_ok()), policy, 20.0)
        assert verdict is not None
        assert verdict.draw is not None
        assert verdict.reason == BANDIT
        assert verdict.chosen_model == verdict.draw.arm
        assert verdict.propensity == pytest.approx(1 / 3)
        assert verdict.draw.bucket == bandit.ALL
        assert verdict.draw.learned_version == 0
        counts[verdict.draw.arm] += 1
    assert all(abs(k / 3000 - 1 / 3) < 0.03 for k in counts.values())


def test_the_drawn_arm_is_waited_for_until_its_stage_ends() -> None:
    policy = _policy()
    rid = "r-wait"
    arm = decide(_request(rid, _all_ok()), policy, 20.0).draw.arm  # type: ignore[union-attr]
    others = {m: _ok(10.0) for m in ("a", "b", "c", "safe") if m != arm}
    assert decide(_request(rid, others), policy, 20.0) is None  # waits for its own arm
    late = decide(_request(rid, others), policy, 600.0)  # the stage ended: next stage
    assert late is not None
    assert late.chosen_model == "safe"
    assert late.reason == fallback_reason(1)
    assert late.propensity == pytest.approx(1 / 3)  # the draw led here


def test_a_failed_arm_moves_on_at_once() -> None:
    policy = _policy()
    rid = "r-fail"
    arm = decide(_request(rid, _all_ok()), policy, 20.0).draw.arm  # type: ignore[union-attr]
    scores = {**_all_ok(), arm: _failed(5.0)}
    verdict = decide(_request(rid, scores), policy, 20.0)
    assert verdict is not None
    assert verdict.chosen_model == "safe"


def test_learned_rewards_shift_the_draw() -> None:
    policy = _policy()
    learned = Learned(
        4,
        {bandit.ALL: {"a": ArmStats(900, 450), "b": ArmStats(900, 495), "c": ArmStats(900, 540)}},
    )
    chosen = [decide(_request(f"r{i}", _all_ok()), policy, 20.0, learned) for i in range(2000)]
    on_c = [v for v in chosen if v is not None and v.chosen_model == "c"]
    assert len(on_c) / 2000 > 0.9
    assert all(v.draw is not None and v.draw.learned_version == 4 for v in on_c)
    probs = arm_probabilities(ARMS, learned.buckets[bandit.ALL], min_share=0.02)
    assert on_c[0].propensity == pytest.approx(probs["c"])


def test_context_buckets_learn_apart() -> None:
    policy = _policy(bandit={"context": {"attribute": "tier", "values": ["free", "pro"]}})
    learned = Learned(
        2,
        {
            "free": {"a": ArmStats(500, 450), "b": ArmStats(500, 50), "c": ArmStats(500, 50)},
            "pro": {"a": ArmStats(500, 50), "b": ArmStats(500, 450), "c": ArmStats(500, 50)},
        },
    )
    for tier, best in (("free", "a"), ("pro", "b")):
        verdict = decide(
            _request("r1", _all_ok(), attributes={"tier": tier}), policy, 20.0, learned
        )
        assert verdict is not None
        assert verdict.chosen_model == best
        assert verdict.draw is not None
        assert verdict.draw.bucket == tier
    other = decide(_request("r1", _all_ok(), attributes={"tier": "vip"}), policy, 20.0, learned)
    assert other is not None
    assert other.draw is not None
    assert other.draw.bucket == "other"


def test_an_earlier_stage_answer_does_not_carry_the_draw_probability() -> None:
    policy = _policy(
        stages=[
            {"until_ms": 100, "accept": ["safe"]},
            {"until_ms": "deadline", "accept": ["a", "b", "c"], "pick": "bandit"},
        ]
    )
    verdict = decide(_request("r1", _all_ok()), policy, 20.0)
    assert verdict is not None
    assert verdict.reason == CHAMPION_IN_TIME
    assert verdict.propensity == 1.0
    assert verdict.draw is not None


def test_a_stream_is_granted_to_the_drawn_arm() -> None:
    policy = _policy()
    rid = "r-stream"
    arm = decide(_request(rid, _all_ok()), policy, 20.0).draw.arm  # type: ignore[union-attr]
    grant = stream_grant(_request(rid, {}, streams=True), policy, 0.0)
    assert grant is not None
    assert grant.model == arm
    granted = _request(rid, _all_ok(), streams=True, grant=Grant(arm))
    verdict = decide(granted, policy, 20.0)
    assert verdict is not None
    assert verdict.chosen_model == arm
    assert verdict.reason == BANDIT
    assert verdict.propensity == pytest.approx(1 / 3)

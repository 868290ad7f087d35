"""Off-policy evaluation of a candidate policy on a small archive: the replay through
decide, the answer distribution of a canary policy, and the estimates by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.archive_files import connect
from services.common.arrivals import Arrived, RequestSnapshot
from services.common.bandit import ALL, ArmStats, Learned, arm_probabilities
from services.common.messages import ScoreStatus
from services.common.policy import parse_policy
from services.compare.evaluate import evaluate, load_archived, target_distribution
from tests.factories import policy_doc
from tests.unit.compare.archive_rows import ArchiveRows

IN_FORCE = parse_policy(policy_doc(version=2), "in force")  # fast, then fast or slow, any
ALWAYS_SLOW = parse_policy(
    policy_doc(stages=[{"until_ms": "deadline", "accept": ["slow"]}]), "candidate"
)


def _snapshot(fast: ScoreStatus = ScoreStatus.OK) -> RequestSnapshot:
    scores = {"fast": Arrived(fast, 10.0, "f"), "slow": Arrived(ScoreStatus.OK, 50.0, "s")}
    return RequestSnapshot("r1", 0.0, 1000.0, scores)


def test_the_answer_distribution_of_plain_and_canary_policies() -> None:
    assert target_distribution(_snapshot(), IN_FORCE) == {"fast": 1.0}
    assert target_distribution(_snapshot(), ALWAYS_SLOW) == {"slow": 1.0}
    canary = parse_policy(policy_doc(canary={"model": "slow", "share": 0.2}), "canary")
    assert target_distribution(_snapshot(), canary) == pytest.approx({"slow": 0.2, "fast": 0.8})
    # the fast model failed: both branches answer with slow
    assert target_distribution(_snapshot(ScoreStatus.ERROR), canary) == pytest.approx({"slow": 1.0})
    silent = RequestSnapshot("r2", 0.0, 1000.0, {})
    assert target_distribution(silent, IN_FORCE) == {None: 1.0}  # the default answer


def _archive(tmp_path: Path) -> Path:
    rows = ArchiveRows()
    # r1: both ok, fast answered, reward 1; r2: fast failed, slow answered, reward 0;
    # r3: slow late, fast answered, reward 1; r4: no feedback; r5: another endpoint
    for rid, fast, slow, chosen, reward in (
        ("r1", ("ok", 10.0), ("ok", 50.0), "fast", 1.0),
        ("r2", ("error", 5.0), ("ok", 60.0), "slow", 0.0),
        ("r3", ("ok", 20.0), ("ok", 1400.0), "fast", 1.0),
        ("r4", ("ok", 20.0), ("ok", 30.0), "fast", None),
    ):
        rows.request(rid, attributes={"user": "u1"})
        rows.score(rid, "fast", fast[1], status=fast[0], role="champion")
        rows.score(rid, "slow", slow[1], status=slow[0])
        rows.decision(rid, chosen, version=2)
        if reward is not None:
            rows.feedback(rid, reward)
    rows.feedback("r1", 0.0, at=-5)  # an earlier judgement: the latest one counts
    rows.request("r5", endpoint="other")
    rows.decision("r5", "fast", endpoint="other")
    rows.feedback("r5", 1.0)
    return rows.write(tmp_path / "archive")


def test_archived_requests_are_replayed_and_estimated(tmp_path: Path) -> None:
    con = connect(_archive(tmp_path))
    archived = load_archived(con, "demo")
    con.close()
    assert [a.snapshot.request_id for a in archived] == ["r1", "r2", "r3"]
    first = archived[0]
    assert first.snapshot.attributes == {"user": "u1"}
    assert first.snapshot.deadline_at_ms == 1000.0
    assert {m: a.at_ms for m, a in first.snapshot.scores.items()} == {"fast": 10.0, "slow": 50.0}
    assert first.reward == 1.0
    result = evaluate(archived, ALWAYS_SLOW, IN_FORCE)
    # always slow answers slow on r1 and r2 (r3: slow is past the deadline: the default);
    # only r2 was logged as slow: IPS = (0 + 0 + 0) / 3, SNIPS = 0 / 1
    assert result.candidate.matched == 1
    assert result.candidate.ips.value == pytest.approx(0.0)
    assert result.candidate.snips.value == pytest.approx(0.0)
    # the policy in force answers each as logged: on-policy 2/3, and so do its estimates
    assert result.on_policy is not None
    assert result.on_policy.value == pytest.approx(2 / 3)
    assert result.in_force is not None
    assert result.in_force.ips.value == pytest.approx(2 / 3)
    assert result.in_force.snips.value == pytest.approx(2 / 3)
    assert result.in_force.dr.value == pytest.approx(2 / 3)
    assert result.agreement == 1.0
    assert result.replayed_propensities == 3
    with pytest.raises(ValueError, match="no archived decisions"):
        evaluate([], ALWAYS_SLOW)


def test_a_bandit_stage_answers_with_each_arm_by_its_probability() -> None:
    bandit = parse_policy(
        policy_doc(
            stages=[
                {"until_ms": 500, "accept": ["fast", "slow"], "pick": "bandit"},
                {"until_ms": "deadline", "accept": ["fast"]},
            ],
            bandit={"min_share": 0.1},
        ),
        "bandit",
    )
    assert target_distribution(_snapshot(), bandit) == pytest.approx({"fast": 0.5, "slow": 0.5})
    learned = Learned(3, {ALL: {"fast": ArmStats(100, 30), "slow": ArmStats(100, 60)}})
    probs = arm_probabilities(["fast", "slow"], learned.buckets[ALL], min_share=0.1)
    assert target_distribution(_snapshot(), bandit, learned) == pytest.approx(probs)
    # slow drawn but failing: the next stage's fast answers on that draw too
    failed = RequestSnapshot(
        "r1",
        0.0,
        1000.0,
        {"fast": Arrived(ScoreStatus.OK, 10.0, "f"), "slow": Arrived(ScoreStatus.ERROR, 20.0)},
    )
    assert target_distribution(failed, bandit, learned) == pytest.approx({"fast": 1.0})

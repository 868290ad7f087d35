"""The rendezvous with a bandit stage: decisions record the draw (arm, bucket, learned
version, propensity), and a request keeps the learned state it first saw."""

from __future__ import annotations

import itertools
from typing import Any

from services.common.bandit import ALL, ArmStats, Learned, arm_probabilities
from services.common.codec import decode, encode
from services.common.kafka import Record
from services.common.messages import ArmRewards, Decision, LearnedEntry
from services.common.policy import parse_policy
from services.control.state import ControlState
from services.rendezvous.live import learned_of
from services.rendezvous.mailbox import MailboxStore
from services.rendezvous.service import Rendezvous
from tests.factories import policy_doc, request, score_for
from tests.unit.rendezvous.test_poison_rendezvous import TOPICS, _runner

POLICY = parse_policy(
    policy_doc(
        models=["fast", "slow"],
        stages=[
            {"until_ms": 500, "accept": ["fast", "slow"], "pick": "bandit"},
            {"until_ms": "deadline", "accept": "any"},
        ],
        bandit={"min_share": 0.05},
    ),
    "t",
)
_offsets = itertools.count()


def _record(topic: str, msg: Any) -> Record:
    return Record(topic, 0, next(_offsets), msg.request_id.encode(), encode(msg))


def _decisions(rdv: Rendezvous, ids: list[str]) -> list[Decision]:
    records = []
    for rid in ids:
        req = request("x", request_id=rid)
        records.append(_record(TOPICS.requests, req))
        records += [_record(TOPICS.scores, score_for(req, model=m)) for m in ("fast", "slow")]
    runner, producer = _runner(rdv, records)
    for _ in range(0, len(records), 256):
        runner._turn(256)
    out = [decode(o.value, Decision) for o in producer.sent if o.topic == TOPICS.decisions]
    producer.ack()
    return out


def test_decisions_record_the_draw_from_the_learned_state() -> None:
    rdv = Rendezvous(policies={"demo": POLICY}, topics=TOPICS, store=MailboxStore())
    state = ControlState()
    entry = LearnedEntry(
        endpoint="demo",
        version=3,
        buckets={
            ALL: {
                "fast": ArmRewards(n=400, total=120, squares=120),
                "slow": ArmRewards(n=400, total=300, squares=300),
            }
        },
        feedback=800,
        learned_ms=1,
    )
    state.apply(b"learned/demo", entry)
    rdv.learned = learned_of(state)
    probs = arm_probabilities(
        ["fast", "slow"],
        {"fast": ArmStats(400, 120, 120), "slow": ArmStats(400, 300, 300)},
        min_share=0.05,
    )
    decisions = _decisions(rdv, [f"r{i}" for i in range(200)])
    assert len(decisions) == 200
    for d in decisions:
        assert d.reason == "bandit"
        assert d.arm == d.chosen_model
        assert d.bucket == ALL
        assert d.learned_version == 3
        assert d.propensity == probs[d.arm or ""]
    slow = sum(d.chosen_model == "slow" for d in decisions)
    assert 170 <= slow < 200  # p(slow) = 0.95: the floor keeps fast in play


def test_a_request_keeps_the_state_it_first_saw() -> None:
    rdv = Rendezvous(policies={"demo": POLICY}, topics=TOPICS, store=MailboxStore())
    req = request("x", request_id="pinned")
    scores = [_record(TOPICS.scores, score_for(req, model=m)) for m in ("fast", "slow")]
    runner, producer = _runner(rdv, [_record(TOPICS.requests, req), *scores])
    runner._turn(1)  # opened and waiting: no score yet
    box = rdv.store.get("pinned")
    assert box is not None
    assert box.learned == Learned()
    rdv.learned = {"demo": Learned(9, {ALL: {"fast": ArmStats(100, 100, 100)}})}
    runner._turn(16)
    decisions = [decode(o.value, Decision) for o in producer.sent if o.topic == TOPICS.decisions]
    assert [d.learned_version for d in decisions] == [0]

"""The rendezvous under bad input: one record fails alone, the store stays as if it had
not been seen, every other request is answered once; memory bounded by bytes."""

from __future__ import annotations

import itertools
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from services.common.codec import decode, encode
from services.common.kafka import Record
from services.common.loop import Context, Inbound, StreamRunner
from services.common.messages import DeadLetter, Decision, Reply, RequestEnvelope, Score
from services.common.policy import Policy, parse_policy
from services.common.topics import load_topics
from services.rendezvous.mailbox import MailboxStore, Outcome, StoreLimits
from services.rendezvous.service import POLICY_FAILED, Rendezvous
from tests.factories import policy_doc, request, score_for
from tests.unit.common.test_loop import FakeConsumer, FakeProducer

TOPICS = load_topics(prefix="unit.")
FAST = parse_policy(
    policy_doc(models=["fast"], stages=[{"until_ms": "deadline", "accept": ["fast"]}]), "t"
)
_offsets = itertools.count()


def _record(topic: str, msg: Any, partition: int = 0) -> Record:
    return Record(topic, partition, next(_offsets), msg.request_id.encode(), encode(msg))


def _runner(rdv: Rendezvous, records: list[Record]) -> tuple[StreamRunner, FakeProducer]:
    consumer, producer = FakeConsumer(records), FakeProducer()
    consumer.assignment = frozenset({(TOPICS.requests, 0), (TOPICS.scores, 0)})
    runner = StreamRunner(
        service="unit-rdv",
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        decoders={
            TOPICS.requests: lambda b: decode(b, RequestEnvelope),
            TOPICS.scores: lambda b: decode(b, Score),
        },
        processor=rdv,
        dead_letter_topic=TOPICS.dead_letters,
        batch_size=64,
    )
    return runner, producer


def _replies(producer: FakeProducer) -> list[str]:
    return [decode(o.value, Reply).request_id for o in producer.sent if o.topic == "rdv.replies"]


def test_a_failing_policy_answers_its_request_and_every_other_request_of_the_batch() -> None:
    """Before: the batch raised, was re-fed record by record, and request a (decided in
    the failed pass) was never answered."""
    rdv = Rendezvous(
        policies={"demo": FAST, "broken": cast(Policy, object())},
        topics=TOPICS,
        store=MailboxStore(),
    )
    a, x = request("a", request_id="a"), request("x", request_id="x", endpoint="broken")
    records = [
        _record(TOPICS.scores, score_for(a, model="fast", output="A")),
        _record(TOPICS.requests, a),
        _record(TOPICS.requests, x),
    ]
    runner, producer = _runner(rdv, records)

    runner._turn(64)

    assert sorted(_replies(producer)) == ["a", "x"]
    decisions = [decode(o.value, Decision) for o in producer.sent if o.topic == TOPICS.decisions]
    assert {d.request_id: d.reason for d in decisions} == {
        "a": "champion_in_time",
        "x": POLICY_FAILED,
    }
    producer.ack()
    runner._settle()
    assert runner._tracker.outstanding() == 0


def test_a_deadline_too_far_ahead_is_dead_lettered_alone_and_nothing_is_stored() -> None:
    rdv = Rendezvous(policies={"demo": FAST}, topics=TOPICS, store=MailboxStore())
    far = request("far", request_id="far", deadline_in_ms=10 * 365 * 86_400_000)
    ok = request("ok", request_id="ok")
    records = [_record(TOPICS.requests, far), _record(TOPICS.requests, ok)]
    runner, producer = _runner(rdv, records)

    runner._turn(64)

    [letter] = [
        decode(o.value, DeadLetter) for o in producer.sent if o.topic == TOPICS.dead_letters
    ]
    assert (letter.origin_offset, letter.error_code) == (records[0].offset, "bad_message")
    assert "ahead" in letter.error
    assert rdv.store.get("far") is None
    assert rdv.store.get("ok") is not None
    assert rdv.store.counters.rejected_deadline == 1
    producer.ack()
    runner._settle()
    assert runner._tracker.outstanding() == 1  # only "ok", held in its mailbox


def test_the_same_request_record_read_again_is_held_and_released_once() -> None:
    """Before: the ref was kept twice and the release of the second raised
    ``ticket ... finished more than it began``, stopping the service."""
    rdv = Rendezvous(policies={"demo": FAST}, topics=TOPICS, store=MailboxStore())
    req = request("r", request_id="r")
    rec = _record(TOPICS.requests, req)
    runner, producer = _runner(
        rdv, [rec, rec, _record(TOPICS.scores, score_for(req, model="fast"))]
    )

    runner._turn(1)  # the request
    runner._turn(1)  # the same record again (the consumer rewound)
    runner._turn(1)  # its score: decided
    producer.ack()
    runner._settle()

    assert _replies(producer) == ["r"]
    assert runner._tracker.outstanding() == 0


# -- bytes --------------------------------------------------------------------------


def test_requests_beyond_the_open_byte_budget_are_refused_and_the_bytes_come_back() -> None:
    limits = StoreLimits(max_open_bytes=1000, score_reserve=0.2)
    store = MailboxStore(limits)
    one = request(request_id="one")
    two = request(request_id="two")
    assert store.open(one, "r1", 0.0, float(one.created_ms), size=700).outcome is Outcome.OPENED
    refused = store.open(two, "r2", 0.0, float(two.created_ms), size=200)
    assert refused.outcome is Outcome.FULL  # 900 > 800: the reserve is for scores
    assert refused.release == ("r2",)
    assert store.is_decided("two")
    assert store.counters.rejected_bytes == 1
    filled = store.add_score(score_for(one, model="fast"), "s1", 0.0, size=250)
    assert filled.outcome is Outcome.FILLED
    assert store.open_bytes == 950
    shed = store.add_score(score_for(one, model="slow"), "s2", 0.0, size=100)
    assert shed.outcome is Outcome.SHED
    assert shed.release == ("s2",)
    assert store.counters.scores_shed == 1
    assert store.close("one", 1.0).refs == ["r1", "s1"]
    assert store.open_bytes == 0


def test_orphans_are_evicted_oldest_first_by_bytes() -> None:
    store = MailboxStore(StoreLimits(max_orphan_bytes=100))
    a, b, c = (request(request_id=r) for r in "abc")
    assert store.add_score(score_for(a, model="m"), "sa", 0.0, size=60).release == ()
    assert store.add_score(score_for(b, model="m"), "sb", 1.0, size=30).release == ()
    evicted = store.add_score(score_for(c, model="m"), "sc", 2.0, size=40)
    assert evicted.release == ("sa",)
    assert store.orphan_bytes == 70
    huge = store.add_score(score_for(a, model="n"), "big", 3.0, size=101)
    assert huge.release == ("big",)  # larger than the whole budget: dropped at once
    assert store.orphan_bytes == 70
    opened = store.open(b, "rb", 4.0, float(b.created_ms), size=10)
    assert opened.mailbox is not None
    assert opened.mailbox.refs == ["rb", "sb"]
    assert (store.orphan_bytes, store.open_bytes) == (40, 40)
    assert store.drop("b") == ("rb", "sb")
    assert store.open_bytes == 0


def test_the_rendezvous_publishes_the_bytes_it_holds() -> None:
    rdv = Rendezvous(policies={"demo": FAST}, topics=TOPICS, store=MailboxStore())
    req = request("x" * 500, request_id="held")
    rec = _record(TOPICS.requests, req)
    ctx = Context()
    rdv.process([Inbound(rec, req)], ctx)
    rdv.tick(0.0, Context())
    held = REGISTRY.get_sample_value("rdv_rendezvous_held_bytes", {"pool": "open"})
    assert held == len(rec.value or b"") + len(rec.key or b"")


@pytest.mark.parametrize("field", ["max_open_bytes", "max_orphan_bytes"])
def test_byte_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        StoreLimits(**{field: 0})  # type: ignore[arg-type]

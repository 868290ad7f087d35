"""A score that carries a copy of its request opens the request's mailbox: the request
is answered before its record is read, and the record, read later, is only checked off
(released, no second answer). A score without a copy waits for its request, as before."""

from __future__ import annotations

import itertools
import json

import pytest

from services.common.codec import decode, encode
from services.common.errors import MessageError
from services.common.kafka import Record
from services.common.loop import Context, Inbound
from services.common.messages import Decision, Reply, RequestEnvelope, Score
from services.common.policy import parse_policy
from services.rendezvous.mailbox import MailboxStore, StoreLimits
from services.rendezvous.service import Rendezvous
from tests.factories import policy_doc, request, score_for
from tests.unit.rendezvous.test_poison_rendezvous import TOPICS

_offsets = itertools.count()


def _rendezvous() -> tuple[Rendezvous, MailboxStore]:
    store = MailboxStore()
    policy = parse_policy(policy_doc(), "t")  # the fast model's answer is taken at once
    return Rendezvous(policies={"demo": policy}, topics=TOPICS, store=store), store


def _feed(rdv: Rendezvous, topic: str, msg: RequestEnvelope | Score) -> tuple[Context, Record]:
    rec = Record(topic, 0, next(_offsets), msg.request_id.encode(), encode(msg))
    ctx = Context()
    rdv.process([Inbound(rec, msg)], ctx)
    return ctx, rec


def _answers(ctx: Context) -> tuple[list[Reply], list[Decision]]:
    outs = [out for out, _ in ctx.emits]
    replies = [decode(o.value, Reply) for o in outs if o.topic == TOPICS.replies]
    decisions = [decode(o.value, Decision) for o in outs if o.topic == TOPICS.decisions]
    return replies, decisions


def test_a_score_with_a_copy_is_answered_before_its_request_is_read() -> None:
    rdv, store = _rendezvous()
    req = request("hi", reply_topic=TOPICS.replies)
    first, score_rec = _feed(rdv, TOPICS.scores, score_for(req, model="fast", output=1, copy=True))

    [reply], [decision] = _answers(first)
    assert (reply.request_id, reply.model, reply.output) == (req.request_id, "fast", 1)
    assert decision.chosen_model == "fast"
    [(_, sources)] = [e for e in first.emits if e[0].topic == TOPICS.replies]
    assert sources == (score_rec,)  # the score's offset waits for the answer
    assert len(store) == 0

    later, req_rec = _feed(rdv, TOPICS.requests, req)
    assert later.emits == []  # no second answer
    assert later.releases == [req_rec]  # checked off: its offset can be committed
    assert later.failures == []
    assert store.counters.duplicate_requests == 0


def test_a_score_without_a_copy_waits_for_its_request() -> None:
    rdv, store = _rendezvous()
    req = request("hi", reply_topic=TOPICS.replies)
    first, _ = _feed(rdv, TOPICS.scores, score_for(req, model="fast", output=1))
    assert first.emits == []
    assert store.orphan_count == 1
    later, _ = _feed(rdv, TOPICS.requests, req)
    [reply], [_] = _answers(later)
    assert reply.model == "fast"


def test_a_copy_whose_model_is_not_taken_yet_opens_a_mailbox_that_waits() -> None:
    rdv, store = _rendezvous()
    req = request("hi", reply_topic=TOPICS.replies)
    first, _ = _feed(rdv, TOPICS.scores, score_for(req, model="slow", output=2, copy=True))
    assert first.emits == []  # the first stage takes only the fast model
    box = store.get(req.request_id)
    assert box is not None
    assert (box.read, list(box.scores)) == (False, ["slow"])
    assert box.deadline_at_ms - box.arrived_ms <= 2000  # the request's own deadline
    _feed(rdv, TOPICS.requests, req)
    assert box.read
    done, _ = _feed(rdv, TOPICS.scores, score_for(req, model="fast", output=1, copy=True))
    [reply], [decision] = _answers(done)
    assert reply.model == "fast"
    assert sorted(decision.in_time) == ["fast", "slow"]


def test_a_score_whose_copy_is_not_a_request_is_refused_when_read() -> None:
    req = request("hi", reply_topic=TOPICS.replies)
    bad = score_for(req, model="fast", copy=True).model_dump(mode="json", by_alias=True)
    bad["request"]["deadline_ms"] = bad["request"]["created_ms"]  # a deadline at creation
    with pytest.raises(MessageError, match="deadline_ms"):
        decode(json.dumps(bad).encode(), Score)


def test_a_copy_with_a_deadline_too_far_ahead_leaves_the_score_waiting() -> None:
    store = MailboxStore(StoreLimits(max_deadline_ms=1000))
    policy = parse_policy(policy_doc(), "t")
    rdv = Rendezvous(policies={"demo": policy}, topics=TOPICS, store=store)
    req = request("hi", deadline_in_ms=5000, reply_topic=TOPICS.replies)
    first, _ = _feed(rdv, TOPICS.scores, score_for(req, model="fast", output=1, copy=True))
    assert (first.emits, len(store), store.orphan_count) == ([], 0, 1)
    later, req_rec = _feed(rdv, TOPICS.requests, req)  # the record is refused with the reason
    [(failed, error)] = later.failures
    assert failed == req_rec
    assert "more than 1000 ms ahead" in str(error)

"""The streaming rule: ``stream_grant`` picks the one model a streaming request's client
sees, once the OOD gate allows; ``decide`` then answers only with that model's score.
Also the rendezvous processor's side: the grant record and the decision's mark."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from pydantic import JsonValue

from services.common.arrivals import Grant, RequestSnapshot
from services.common.codec import decode, encode
from services.common.decide import (
    ALL_FAILED,
    CANARY,
    CHAMPION_IN_TIME,
    DEADLINE_EXCEEDED,
    OOD_SAFE_REPLY,
    decide,
    fallback_reason,
    in_canary,
    stream_grant,
)
from services.common.kafka import Record
from services.common.loop import Context, Inbound
from services.common.messages import (
    Decision,
    ErrorBody,
    OodCheck,
    Reply,
    RequestEnvelope,
    Role,
    ScoreStatus,
    StreamGrant,
)
from services.common.policy import Policy, parse_policy
from services.common.topics import load_topics
from services.rendezvous.mailbox import Mailbox, MailboxStore
from services.rendezvous.service import Rendezvous
from tests.factories import policy_doc, request, score_for

A = 10_000.0  # monotonic ms at which the request reached the rendezvous
OK, ERR = ScoreStatus.OK, ScoreStatus.ERROR
BOOM = ErrorBody(code="prediction_failed", message="boom")
STREAM = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
SAFE = {"text": "I can help with travel."}
CLEAR = OodCheck(status="clear", detector="ood", score=3.0)

PLAIN = parse_policy(policy_doc(), "test")  # fast <300; fast, slow <800; any <1000
GATED = parse_policy(
    policy_doc(
        models=["fast", "slow", "ood"],
        ood={"detector": "ood", "wait_ms": 200, "when_flagged": {"output": SAFE}},
    ),
    "test",
)


def _canary_policy() -> tuple[Policy, str]:
    """A policy with canary slow, and a request id that falls in its share."""
    policy = parse_policy(policy_doc(canary={"model": "slow", "share": 0.5}), "test")
    for n in itertools.count():
        if in_canary(RequestSnapshot(f"c{n}", A, A + 1000), policy):
            return policy, f"c{n}"
    raise AssertionError("unreachable")


CANARIED, IN_CANARY = _canary_policy()


def _box(
    *arrivals: tuple[str, ScoreStatus, float],
    payload: JsonValue = STREAM,
    grant: Grant | None = None,
    request_id: str = "req-s",
    error: ErrorBody = BOOM,
) -> Mailbox:
    """Arrivals: (model, status, elapsed ms); ok outputs are the model's name, the
    detector "ood" reports ``{"is_ood": status is ERR}`` (ERR here means: flagged)."""
    req = request(payload, request_id=request_id)
    box = Mailbox(req, A, A + 1000, grant=grant)
    for model, status, at in arrivals:
        if model == "ood":
            out = {"is_ood": status is ERR, "ood_score": 3.0}
            score = score_for(req, model="ood", output=out).model_copy(
                update={"role": Role.DETECTOR}
            )
        elif status is OK:
            score = score_for(req, model=model, output=model)
        else:
            score = score_for(req, model=model, status=status, error=error)
        box.add(score, A + at)
    return box


GRANT_CASES: list[tuple[str, Policy, Mailbox, float, Grant | None]] = [
    ("not-streaming", PLAIN, _box(payload={"stream": False}), 0, None),
    ("the-first-stages-champion", PLAIN, _box(), 0, Grant("fast")),
    ("already-granted", PLAIN, _box(grant=Grant("slow")), 0, None),
    ("a-failed-champion-is-skipped", PLAIN, _box(("fast", ERR, 5)), 10, Grant("slow")),
    ("the-current-stage", PLAIN, _box(), 350, Grant("fast")),
    ("none-left", PLAIN, _box(("fast", ERR, 5), ("slow", ERR, 6)), 10, None),
    ("at-the-deadline-no-grant", PLAIN, _box(), 1000, None),
    ("waits-for-the-detector", GATED, _box(), 50, None),
    ("clear", GATED, _box(("ood", OK, 40)), 40, Grant("fast", CLEAR)),
    ("flagged-gets-no-grant", GATED, _box(("ood", ERR, 40)), 40, None),
    (
        "the-wait-ends-unknown",
        GATED,
        _box(),
        200,
        Grant("fast", OodCheck(status="unknown", detector="ood")),
    ),
    ("canary-share", CANARIED, _box(request_id=IN_CANARY), 0, Grant("slow")),
    (
        "a-failed-canary-leaves-the-schedule",
        CANARIED,
        _box(("slow", ERR, 5), request_id=IN_CANARY),
        10,
        Grant("fast"),
    ),
]


@pytest.mark.parametrize(
    ("policy", "box", "now", "expected"),
    [c[1:] for c in GRANT_CASES],
    ids=[c[0] for c in GRANT_CASES],
)
def test_stream_grant(policy: Policy, box: Mailbox, now: float, expected: Grant | None) -> None:
    assert stream_grant(box, policy, A + now) == expected


def _verdict(policy: Policy, box: Mailbox, now: float) -> tuple[Any, ...] | None:
    v = decide(box, policy, A + now)
    if v is None:
        return None
    return v.chosen_model, v.reason, v.output, None if v.error is None else v.error.code


FAST, SLOW = Grant("fast"), Grant("slow")
DECIDE_CASES: list[tuple[str, Policy, Mailbox, float, tuple[Any, ...] | None]] = [
    (
        "granted-answers-in-time",
        PLAIN,
        _box(("fast", OK, 50), grant=FAST),
        50,
        ("fast", CHAMPION_IN_TIME, "fast", None),
    ),
    ("others-cannot-answer", PLAIN, _box(("slow", OK, 50), grant=FAST), 500, None),
    (
        "granted-answers-late",
        PLAIN,
        _box(("slow", OK, 50), ("fast", OK, 500), grant=FAST),
        500,
        ("fast", fallback_reason(1), "fast", None),
    ),
    (
        "granted-in-the-last-stage",
        PLAIN,
        _box(("slow", OK, 900), grant=SLOW),
        900,
        ("slow", fallback_reason(2), "slow", None),
    ),
    (
        "granted-fails-the-default-answers",
        PLAIN,
        _box(("fast", ERR, 50), ("slow", OK, 40), grant=FAST),
        50,
        (None, ALL_FAILED, None, ALL_FAILED),
    ),
    (
        "a-client-error-stays-one",
        PLAIN,
        _box(("fast", ERR, 50), grant=FAST, error=ErrorBody(code="prompt_too_long", message="9k")),
        50,
        (None, ALL_FAILED, None, "prompt_too_long"),
    ),
    (
        "silent-until-the-deadline",
        PLAIN,
        _box(("slow", OK, 100), grant=FAST),
        1000,
        (None, DEADLINE_EXCEEDED, None, "deadline_exceeded"),
    ),
    (
        "a-partial-answer-before-the-deadline",
        PLAIN,
        _box(("fast", OK, 990), grant=FAST),
        1000,  # decided at the deadline: the last stage's reason, as without streaming
        ("fast", fallback_reason(2), "fast", None),
    ),
    (
        "the-detector-cannot-flag-after-the-grant",
        GATED,
        _box(("ood", ERR, 300), ("fast", OK, 310), grant=Grant("fast", CLEAR)),
        310,
        ("fast", fallback_reason(1), "fast", None),
    ),
    (
        "without-a-grant-the-gate-still-flags",
        GATED,
        _box(("ood", ERR, 30), ("fast", OK, 10)),
        30,
        (None, OOD_SAFE_REPLY, SAFE, None),
    ),
    (
        "a-granted-canary",
        CANARIED,
        _box(("fast", OK, 10), ("slow", OK, 400), grant=SLOW, request_id=IN_CANARY),
        400,
        ("slow", CANARY, "slow", None),
    ),
]


@pytest.mark.parametrize(
    ("policy", "box", "now", "expected"),
    [c[1:] for c in DECIDE_CASES],
    ids=[c[0] for c in DECIDE_CASES],
)
def test_decide_with_a_grant(
    policy: Policy, box: Mailbox, now: float, expected: tuple[Any, ...] | None
) -> None:
    assert _verdict(policy, box, now) == expected


def test_a_granted_verdict_carries_the_finding_of_the_grant() -> None:
    box = _box(("ood", ERR, 300), ("fast", OK, 310), grant=Grant("fast", CLEAR))
    verdict = decide(box, GATED, A + 310)
    assert verdict is not None
    assert verdict.ood == CLEAR


# -- the processor ----------------------------------------------------------------------

TOPICS = load_topics(prefix="unit.")
_offsets = itertools.count()


def _inbound(topic: str, msg: Any) -> Inbound:
    return Inbound(Record(topic, 0, next(_offsets), msg.request_id.encode(), encode(msg)), msg)


def _run(rdv: Rendezvous, *msgs: tuple[str, Any]) -> Context:
    ctx = Context()
    rdv.process([_inbound(t, m) for t, m in msgs], ctx)
    return ctx


def test_the_rendezvous_sends_the_grant_then_the_reply_and_marks_the_decision() -> None:
    clock = iter(float(t) for t in (A, A + 20))
    req: RequestEnvelope = request(STREAM, request_id="req-p")
    rdv = Rendezvous(
        policies={"demo": PLAIN},
        topics=TOPICS,
        store=MailboxStore(),
        clock=lambda: next(clock),
        wall=lambda: float(req.created_ms),  # the request was just made
    )
    opened = _run(rdv, (TOPICS.requests, req))
    [grant_out] = opened.best_effort
    assert grant_out.topic == req.return_address.topic
    grant = decode(grant_out.value, StreamGrant)
    assert (grant.request_id, grant.model, grant.ood) == ("req-p", "fast", None)
    assert opened.emits == []  # waiting for fast

    slow = score_for(req, model="slow", output="slow")
    fast = score_for(req, model="fast", output="fast")
    answered = _run(rdv, (TOPICS.scores, slow), (TOPICS.scores, fast))
    assert answered.best_effort == []  # granted once
    reply = decode(answered.emits[0][0].value, Reply)
    decision = decode(answered.emits[1][0].value, Decision)
    assert (reply.model, reply.reason) == ("fast", CHAMPION_IN_TIME)
    assert decision.streamed is True
    assert decision.chosen_model == "fast"


def test_a_request_that_does_not_stream_gets_no_grant() -> None:
    rdv = Rendezvous(policies={"demo": PLAIN}, topics=TOPICS, store=MailboxStore())
    req = request({"text": "hi"})
    ctx = _run(rdv, (TOPICS.requests, req), (TOPICS.scores, score_for(req, model="fast")))
    assert ctx.best_effort == []
    decision = decode(ctx.emits[1][0].value, Decision)
    assert decision.streamed is False

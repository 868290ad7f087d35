"""decide() with an OOD gate: wait for the detector up to the bound, answer a flagged
request with the safe reply or the fallback model, carry the finding in every verdict."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import JsonValue

from services.common.arrivals import Arrived
from services.common.decide import (
    ALL_FAILED,
    CANARY,
    CHAMPION_IN_TIME,
    DEADLINE_EXCEEDED,
    OOD_FALLBACK,
    OOD_SAFE_REPLY,
    decide,
    next_check,
    read_detector,
)
from services.common.messages import ErrorBody, OodCheck, Role, ScoreStatus
from services.common.policy import Policy, parse_policy
from services.rendezvous.mailbox import Mailbox
from tests.factories import policy_doc, request, score_for

A = 10_000.0  # monotonic ms at which the request reached the rendezvous
OK, ERR = ScoreStatus.OK, ScoreStatus.ERROR
SAFE = {"text": "I can help with travel and banking."}
WAIT_MS = 200


def _policy(when: dict[str, Any] | None = None, **over: Any) -> Policy:
    gate = {"detector": "ood", "wait_ms": WAIT_MS, "when_flagged": when or {"output": SAFE}}
    return parse_policy(policy_doc(models=["fast", "slow", "ood"], ood=gate, **over), "test")


GATED = _policy()
FALLBACK = _policy({"model": "slow"})


def _box(*arrivals: tuple[str, ScoreStatus, float, JsonValue]) -> Mailbox:
    """Arrivals: (model, status, elapsed ms, output). The model "ood" is the detector."""
    req = request(request_id="req-ood")
    box = Mailbox(req, A, A + 1000)
    for model, status, at, output in arrivals:
        score = score_for(
            req,
            model=model,
            status=status,
            output=output if status is OK else None,
            error=ErrorBody(code="prediction_failed", message="boom") if status is ERR else None,
        )
        if model == "ood":
            score = score.model_copy(update={"role": Role.DETECTOR})
        box.add(score, A + at)
    return box


def _flag(is_ood: bool, at: float = 10, score: float = 4.5) -> tuple[Any, ...]:
    return ("ood", OK, at, {"ood_score": score, "is_ood": is_ood, "method": "combined"})


def _summary(policy: Policy, box: Mailbox, now: float) -> tuple[Any, ...] | None:
    verdict = decide(box, policy, A + now)
    if verdict is None:
        return None
    status = None if verdict.ood is None else verdict.ood.status
    return verdict.chosen_model, verdict.reason, verdict.output, status


CASES: list[tuple[str, Policy, Mailbox, float, tuple[Any, ...] | None]] = [
    ("champion-waits-for-the-detector", GATED, _box(("fast", OK, 5, "f")), 50, None),
    (
        "clear-lets-the-champion-answer",
        GATED,
        _box(("fast", OK, 5, "f"), _flag(False, at=20)),
        20,
        ("fast", CHAMPION_IN_TIME, "f", "clear"),
    ),
    (
        "flagged-gets-the-safe-reply-at-once",
        GATED,
        _box(_flag(True, at=15)),
        15,
        (None, OOD_SAFE_REPLY, SAFE, "flagged"),
    ),
    (
        "flagged-wins-over-a-champion-answer",
        GATED,
        _box(("fast", OK, 5, "f"), _flag(True, at=15)),
        15,
        (None, OOD_SAFE_REPLY, SAFE, "flagged"),
    ),
    (
        "silent-detector-holds-no-answer-past-the-wait",
        GATED,
        _box(("fast", OK, 5, "f")),
        WAIT_MS,
        ("fast", CHAMPION_IN_TIME, "f", "unknown"),
    ),
    (
        "a-flag-after-the-wait-counts-while-nothing-was-answered",
        GATED,
        _box(("fast", OK, 250, "f"), _flag(True, at=240)),
        250,
        (None, OOD_SAFE_REPLY, SAFE, "flagged"),
    ),
    (
        "failed-detector-is-unknown-at-once",
        GATED,
        _box(("fast", OK, 5, "f"), ("ood", ERR, 8, None)),
        8,
        ("fast", CHAMPION_IN_TIME, "f", "unknown"),
    ),
    (
        "unreadable-detector-output-is-unknown",
        GATED,
        _box(("fast", OK, 5, "f"), ("ood", OK, 8, {"score": 1})),
        8,
        ("fast", CHAMPION_IN_TIME, "f", "unknown"),
    ),
    (
        "deadline-while-waiting-gives-the-default",
        GATED,
        _box(),
        1000,
        (None, DEADLINE_EXCEEDED, None, "unknown"),
    ),
    (
        "flagged-waits-for-the-fallback-model",
        FALLBACK,
        _box(("fast", OK, 5, "f"), _flag(True)),
        400,
        None,
    ),
    (
        "flagged-gets-the-fallback-model",
        FALLBACK,
        _box(("fast", OK, 5, "f"), _flag(True), ("slow", OK, 450, "s")),
        450,
        ("slow", OOD_FALLBACK, "s", "flagged"),
    ),
    (
        "flagged-and-the-fallback-failed",
        FALLBACK,
        _box(("fast", OK, 5, "f"), _flag(True), ("slow", ERR, 30, None)),
        30,
        (None, ALL_FAILED, None, "flagged"),
    ),
    (
        "flagged-and-no-fallback-by-the-deadline",
        FALLBACK,
        _box(("fast", OK, 5, "f"), _flag(True)),
        1000,
        (None, DEADLINE_EXCEEDED, None, "flagged"),
    ),
]


@pytest.mark.parametrize(
    ("policy", "box", "now", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_gate(policy: Policy, box: Mailbox, now: float, expected: Any) -> None:
    assert _summary(policy, box, now) == expected


def test_the_end_of_the_wait_is_a_check_time() -> None:
    box = _box(("fast", OK, 5, "f"))
    assert next_check(box, GATED, A + 5) == A + WAIT_MS
    assert next_check(box, GATED, A + WAIT_MS) == A + 300  # then the stage boundary


def test_the_canary_branch_is_gated_too() -> None:
    canary = _policy(canary={"model": "slow", "share": 0.999999})
    clear = _box(("slow", OK, 5, "s"), _flag(False, at=9))
    flagged = _box(("slow", OK, 5, "s"), _flag(True, at=9))
    assert decide(clear, canary, A + 6) is None
    assert _summary(canary, clear, 9) == ("slow", CANARY, "s", "clear")
    assert _summary(canary, flagged, 9) == (None, OOD_SAFE_REPLY, SAFE, "flagged")


def test_without_a_gate_verdicts_carry_no_finding() -> None:
    plain = parse_policy(policy_doc(), "test")
    verdict = decide(_box(("fast", OK, 5, "f")), plain, A + 5)
    assert verdict is not None
    assert verdict.ood is None


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            {"is_ood": True, "ood_score": 7.25},
            OodCheck(status="flagged", detector="ood", score=7.25),
        ),
        ({"is_ood": False, "ood_score": 1}, OodCheck(status="clear", detector="ood", score=1.0)),
        ({"is_ood": False, "ood_score": "high"}, OodCheck(status="clear", detector="ood")),
        ({"is_ood": 1, "ood_score": 2.0}, OodCheck(status="unknown", detector="ood")),
        ("flagged", OodCheck(status="unknown", detector="ood")),
    ],
)
def test_reading_the_detector(output: JsonValue, expected: OodCheck) -> None:
    score = Arrived(ScoreStatus.OK, A, output, Role.DETECTOR)
    assert read_detector("ood", score) == expected

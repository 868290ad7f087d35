"""decide(): the schedule, failures, the default, the canary and propensities. Times are
elapsed ms since the request arrived; no clock, no sleeps."""

from __future__ import annotations

import math
from typing import Any

import pytest

from services.common.arrivals import Arrived, RequestSnapshot
from services.common.decide import (
    ALL_FAILED,
    CANARY,
    CHAMPION_IN_TIME,
    DEADLINE_EXCEEDED,
    Verdict,
    deadline_at,
    decide,
    error_verdict,
    in_canary,
    in_time_and_late,
    next_check,
    propensity,
    verdict_latencies,
)
from services.common.messages import ErrorBody, Role, ScoreStatus
from services.common.policy import Policy, parse_policy
from services.rendezvous.mailbox import Mailbox, MailboxStore
from tests.factories import policy_doc, request, score_for

A = 10_000.0  # monotonic ms at which the request reached the rendezvous
OK, ERR, SKIP = ScoreStatus.OK, ScoreStatus.ERROR, ScoreStatus.SKIPPED
DEFAULT_ERROR = ErrorBody(code="deadline_exceeded", message="no acceptable answer by the deadline")
BOOM = ErrorBody(code="prediction_failed", message="boom")


def _policy(**over: Any) -> Policy:
    return parse_policy(policy_doc(**over), "test")


DEMO = _policy()

# (model, status, elapsed ms at arrival[, role])
Arrival = tuple[Any, ...]


def _mailbox(
    arrivals: list[Arrival] = (),  # type: ignore[assignment]
    *,
    deadline_in: float = 1000,
    rid: str = "req-1",
    attributes: dict[str, str] | None = None,
) -> Mailbox:
    req = request(request_id=rid).model_copy(update={"attributes": attributes or {}})
    box = Mailbox(req, A, A + deadline_in)
    for model, status, at, *role in sorted(arrivals, key=lambda a: float(a[2])):
        score = score_for(
            req,
            model=model,
            status=status,
            output=f"{model}-out" if status is OK else None,
            error=BOOM if status is ERR else None,
        )
        if role:
            score = score.model_copy(update={"role": role[0]})
        box.add(score, A + at)
    return box


def _pick(verdict: Verdict | None) -> tuple[str | None, str] | None:
    return None if verdict is None else (verdict.chosen_model, verdict.reason)


SCHEDULE: list[tuple[str, list[Arrival], float, tuple[str | None, str] | None]] = [
    ("champion-in-time", [("fast", OK, 50)], 50, ("fast", CHAMPION_IN_TIME)),
    ("fallback-waits-for-the-champion", [("slow", OK, 40)], 299, None),
    ("fallback-at-the-stage-boundary", [("slow", OK, 40)], 300, ("slow", "fallback:1")),
    ("late-fallback-at-once", [("slow", OK, 450)], 450, ("slow", "fallback:1")),
    (
        "preference-among-answers",
        [("slow", OK, 40), ("fast", OK, 250)],
        300,
        ("fast", "fallback:1"),
    ),
    ("nothing-before-the-deadline", [], 999.9, None),
    ("nothing-by-the-deadline", [], 1000, (None, DEADLINE_EXCEEDED)),
    ("any-in-the-last-stage", [("slow", OK, 850)], 850, ("slow", "fallback:2")),
    (
        "failed-champion-hands-over",
        [("slow", OK, 10), ("fast", ERR, 20)],
        20,
        ("slow", "fallback:1"),
    ),
    (
        "skipped-champion-hands-over",
        [("fast", SKIP, 20), ("slow", OK, 60)],
        60,
        ("slow", "fallback:1"),
    ),
    ("failed-champion-waits-for-fallback", [("fast", ERR, 20)], 250, None),
    ("all-failed-at-once", [("fast", ERR, 20), ("slow", SKIP, 30)], 30, (None, ALL_FAILED)),
    ("not-all-failed-yet", [("fast", ERR, 20), ("slow", SKIP, 30)], 29, None),
    (
        "champion-after-error-of-fallback",
        [("slow", ERR, 20), ("fast", OK, 500)],
        500,
        ("fast", "fallback:1"),
    ),
    ("score-after-the-deadline-ignored", [("fast", OK, 1005)], 1010, (None, DEADLINE_EXCEEDED)),
    ("score-at-the-deadline-counts", [("slow", OK, 1000)], 1000, ("slow", "fallback:2")),
    ("future-score-ignored", [("fast", OK, 60)], 50, None),
]


@pytest.mark.parametrize(
    ("arrivals", "now", "expected"), [c[1:] for c in SCHEDULE], ids=[c[0] for c in SCHEDULE]
)
def test_the_schedule(arrivals: list[Arrival], now: float, expected: Any) -> None:
    assert _pick(decide(_mailbox(arrivals), DEMO, A + now)) == expected


def _snapshot(box: Mailbox) -> RequestSnapshot:
    """The same request as a hand-built view (what compare's counterfactual builds)."""
    scores = {
        model: Arrived(a.status, a.at_ms, a.output, a.role, a.error)
        for model, a in box.scores.items()
    }
    return RequestSnapshot(
        box.request_id, box.arrived_ms, box.deadline_at_ms, scores, box.attributes, box.streams
    )


@pytest.mark.parametrize(
    ("arrivals", "now", "expected"), [c[1:] for c in SCHEDULE], ids=[c[0] for c in SCHEDULE]
)
def test_a_hand_built_view_decides_as_the_mailbox(
    arrivals: list[Arrival], now: float, expected: Any
) -> None:
    box = _mailbox(arrivals)
    assert decide(_snapshot(box), DEMO, A + now) == decide(box, DEMO, A + now)
    assert next_check(_snapshot(box), DEMO, A + now) == next_check(box, DEMO, A + now)


SHORT_DEADLINE: list[tuple[str, list[Arrival], float, tuple[str | None, str] | None]] = [
    ("before-the-request-deadline", [("slow", OK, 50)], 199, None),
    ("the-last-stage-applies-at-the-deadline", [("slow", OK, 50)], 200, ("slow", "fallback:2")),
    ("champion-still-wins", [("slow", OK, 50), ("fast", OK, 150)], 150, ("fast", CHAMPION_IN_TIME)),
    ("default-at-the-deadline", [], 200, (None, DEADLINE_EXCEEDED)),
]


@pytest.mark.parametrize(
    ("arrivals", "now", "expected"),
    [c[1:] for c in SHORT_DEADLINE],
    ids=[c[0] for c in SHORT_DEADLINE],
)
def test_a_request_with_a_shorter_deadline(
    arrivals: list[Arrival], now: float, expected: Any
) -> None:
    assert _pick(decide(_mailbox(arrivals, deadline_in=200), DEMO, A + now)) == expected


def test_the_policy_caps_a_long_request_deadline() -> None:
    box = _mailbox(deadline_in=5000)
    assert deadline_at(box, DEMO) == A + 1000
    assert _pick(decide(box, DEMO, A + 1000)) == (None, DEADLINE_EXCEEDED)


def test_a_request_expired_on_arrival_gets_the_default_at_once() -> None:
    box = _mailbox([("fast", OK, 0)], deadline_in=-50)
    assert _pick(decide(box, DEMO, A)) == (None, DEADLINE_EXCEEDED)


def test_the_default_carries_the_policy_error() -> None:
    verdict = decide(_mailbox(), DEMO, A + 1000)
    assert verdict == Verdict(None, DEADLINE_EXCEEDED, None, DEFAULT_ERROR, 1.0)


def test_a_configured_output_default() -> None:
    policy = _policy(default={"output": {"label": "unknown"}})
    verdict = decide(_mailbox([("fast", ERR, 5), ("slow", ERR, 6)]), policy, A + 6)
    assert verdict == Verdict(None, ALL_FAILED, {"label": "unknown"}, None, 1.0)


def test_an_answer_carries_the_model_output() -> None:
    verdict = decide(_mailbox([("fast", OK, 5)]), DEMO, A + 5)
    assert verdict == Verdict("fast", CHAMPION_IN_TIME, "fast-out", None, 1.0)


OPEN = _policy(
    models=[],
    stages=[{"until_ms": 100, "accept": ["a"]}, {"until_ms": "deadline", "accept": "any"}],
)


@pytest.mark.parametrize(
    ("arrivals", "now", "expected"),
    [
        ([("x", OK, 150), ("y", OK, 120)], 150, ("y", "fallback:1")),  # arrival order
        ([("a", ERR, 10), ("b", ERR, 20)], 20, None),  # anyone may still answer
        ([("a", ERR, 10), ("b", ERR, 20)], 1000, (None, DEADLINE_EXCEEDED)),
        (
            [("d", OK, 120, Role.DECOY), ("o", OK, 130, Role.DETECTOR)],
            1000,
            (None, DEADLINE_EXCEEDED),
        ),
        ([("c", OK, 120, Role.CANARY), ("b", OK, 130, Role.CHALLENGER)], 130, ("b", "fallback:1")),
    ],
    ids=["arrival-order", "never-all-failed", "deadline", "no-decoys", "no-role-canary"],
)
def test_any_with_an_empty_roster(arrivals: list[Arrival], now: float, expected: Any) -> None:
    assert _pick(decide(_mailbox(arrivals), OPEN, A + now)) == expected


def test_all_failed_when_no_remaining_stage_can_accept() -> None:
    policy = _policy(
        models=["fast", "slow", "shadow"],
        stages=[
            {"until_ms": 300, "accept": ["fast"]},
            {"until_ms": "deadline", "accept": ["fast", "slow"]},
        ],
    )
    box = _mailbox([("fast", ERR, 5), ("slow", SKIP, 10)])  # shadow has not answered
    assert _pick(decide(box, policy, A + 10)) == (None, ALL_FAILED)


def test_a_decoy_on_the_roster_does_not_hold_up_all_failed() -> None:
    policy = _policy(models=["fast", "slow", "decoy"])
    box = _mailbox([("fast", ERR, 5), ("slow", ERR, 10), ("decoy", OK, 12, Role.DECOY)])
    assert _pick(decide(box, policy, A + 12)) == (None, ALL_FAILED)


def test_never_none_at_or_past_the_deadline() -> None:
    cases = [[], [("fast", ERR, 5)], [("slow", OK, 1500)], [("fast", SKIP, 1), ("slow", SKIP, 2)]]
    for arrivals in cases:
        for now in (1000, 1000.5, 5000):
            assert decide(_mailbox(arrivals), DEMO, A + now) is not None


@pytest.mark.parametrize(
    ("deadline_in", "now", "expected"),
    [
        (1000, 0, 300),
        (1000, 299.9, 300),
        (1000, 300, 800),
        (1000, 800, 1000),
        (1000, 1200, 1000),
        (200, 0, 200),
        (500, 350, 500),
    ],
)
def test_next_check_is_the_next_boundary(deadline_in: float, now: float, expected: float) -> None:
    assert next_check(_mailbox(deadline_in=deadline_in), DEMO, A + now) == A + expected


def test_a_store_and_next_check_decide_at_the_boundary() -> None:
    store = MailboxStore()
    req = request(request_id="r1", deadline_in_ms=1000)
    box = store.open(req, "q", A, float(req.created_ms)).mailbox
    assert box is not None
    store.add_score(score_for(req, model="slow", output=1), "s", A + 40)
    assert decide(box, DEMO, A + 40) is None
    store.schedule(box, next_check(box, DEMO, A + 40))
    assert store.due(A + 299) == []
    (due,) = store.due(A + 300)
    assert _pick(decide(due, DEMO, A + 300)) == ("slow", "fallback:1")


def test_latencies_and_in_time_and_late() -> None:
    box = _mailbox([("fast", OK, 40), ("shadow", OK, 1200)])
    assert verdict_latencies(box) == {"fast": 40, "shadow": 1200}
    assert in_time_and_late(box, DEMO, A + 1000) == (["fast"], ["shadow", "slow"])
    assert in_time_and_late(box, DEMO, A + 40) == (["fast"], ["shadow", "slow"])


# --- canary ---------------------------------------------------------------------------

CANARY_POLICY = _policy(canary={"model": "slow", "share": 0.05})
STICKY_POLICY = _policy(canary={"model": "slow", "share": 0.3, "sticky_attribute": "user"})


def _view(rid: str, attributes: dict[str, str] | None = None) -> RequestSnapshot:
    """A request as the canary hash reads it: its id and attributes."""
    return RequestSnapshot(rid, A, A + 1000, attributes=attributes or {})


def _ids(policy: Policy, inside: bool, count: int = 3) -> list[str]:
    found = [
        rid
        for rid in (f"req-{i}" for i in range(10_000))
        if in_canary(_view(rid), policy) is inside
    ]
    return found[:count]


@pytest.mark.parametrize("share", [0.05, 0.3, 0.5])
def test_the_canary_share_is_binomial(share: float) -> None:
    policy = _policy(canary={"model": "slow", "share": share})
    n = 10_000
    hits = sum(in_canary(_view(f"id-{i}"), policy) for i in range(n))
    band = 4 * math.sqrt(n * share * (1 - share))
    assert abs(hits - n * share) <= band


def test_a_larger_share_keeps_the_earlier_canary_requests() -> None:
    small, large = (_policy(canary={"model": "slow", "share": s}) for s in (0.05, 0.2))
    inside = _ids(small, True, count=50)
    assert len(inside) == 50
    assert all(in_canary(_view(rid), large) for rid in inside)


def test_the_sticky_attribute_picks_the_branch() -> None:
    for user in (f"user-{u}" for u in range(200)):
        branches = {
            in_canary(_view(f"{user}-{i}", {"user": user}), STICKY_POLICY) for i in range(5)
        }
        assert len(branches) == 1
    users = [in_canary(_view("same", {"user": f"u{u}"}), STICKY_POLICY) for u in range(2000)]
    assert 0.25 < sum(users) / len(users) < 0.35  # by user, not by request id


CANARY_CASES: list[tuple[str, bool, list[Arrival], float, tuple[str | None, str] | None, float]] = [
    ("canary-answers", True, [("fast", OK, 10), ("slow", OK, 100)], 100, ("slow", CANARY), 0.05),
    ("canary-window-waits", True, [("fast", OK, 10)], 299, None, 0.05),
    ("canary-silent-then-normal", True, [("fast", OK, 10)], 300, ("fast", "fallback:1"), 0.05),
    (
        "canary-failed",
        True,
        [("fast", OK, 10), ("slow", ERR, 60)],
        60,
        ("fast", CHAMPION_IN_TIME),
        0.05,
    ),
    (
        "canary-preferred-later",
        True,
        [("slow", OK, 900), ("fast", OK, 850)],
        900,
        ("slow", CANARY),
        0.05,
    ),
    ("canary-at-the-deadline", True, [("slow", OK, 1000)], 1000, ("slow", CANARY), 0.05),
    ("canary-default", True, [], 1000, (None, DEADLINE_EXCEEDED), 0.05),
    ("canary-all-failed", True, [("fast", ERR, 5), ("slow", SKIP, 9)], 9, (None, ALL_FAILED), 0.05),
    (
        "outside-normal",
        False,
        [("fast", OK, 10), ("slow", OK, 5)],
        10,
        ("fast", CHAMPION_IN_TIME),
        0.95,
    ),
    ("outside-slow-waits", False, [("slow", OK, 5)], 299, None, 0.95),
    ("outside-default", False, [], 1000, (None, DEADLINE_EXCEEDED), 0.95),
]


@pytest.mark.parametrize(
    ("inside", "arrivals", "now", "expected", "weight"),
    [c[1:] for c in CANARY_CASES],
    ids=[c[0] for c in CANARY_CASES],
)
def test_canary_decisions_and_propensities(
    inside: bool, arrivals: list[Arrival], now: float, expected: Any, weight: float
) -> None:
    (rid,) = _ids(CANARY_POLICY, inside, count=1)
    verdict = decide(_mailbox(arrivals, rid=rid), CANARY_POLICY, A + now)
    assert _pick(verdict) == expected
    if verdict is not None:
        assert verdict.propensity == pytest.approx(weight)
    assert propensity(_view(rid), CANARY_POLICY) == pytest.approx(weight)


def test_without_a_canary_the_propensity_is_one() -> None:
    assert propensity(_view("req-1"), DEMO) == 1.0
    assert not in_canary(_view("req-1"), DEMO)


def test_error_verdicts() -> None:
    verdict = error_verdict("overloaded", "overloaded", "too many open requests")
    assert verdict == Verdict(
        None,
        "overloaded",
        None,
        ErrorBody(code="overloaded", message="too many open requests"),
        1.0,
    )


def _errors_box(*errors: ErrorBody) -> Mailbox:
    req = request(request_id="req-e")
    box = Mailbox(req, A, A + 1000)
    for i, text in enumerate(errors):
        box.add(score_for(req, model=["fast", "slow"][i], status=ERR, error=text), A + 5 + i)
    return box


def test_all_failed_on_the_same_client_error_answers_that_error() -> None:
    too_long = ErrorBody(code="prompt_too_long", message="5000 tokens")
    box = _errors_box(too_long, too_long)
    verdict = decide(box, _policy(models=["fast", "slow"]), A + 10)
    assert verdict is not None
    assert verdict.reason == ALL_FAILED
    assert verdict.error == too_long


def test_all_failed_for_other_reasons_says_so_and_names_each_failure() -> None:
    box = _errors_box(
        ErrorBody(code="prompt_too_long", message="long"),
        ErrorBody(code="model_error", message="RuntimeError: out of memory"),
    )
    verdict = decide(box, _policy(models=["fast", "slow"]), A + 10)
    assert verdict is not None
    assert verdict.error is not None
    assert verdict.error.code == ALL_FAILED
    assert "out of memory" in verdict.error.message
    assert "fast" in verdict.error.message
    assert "[prompt_too_long] long" in verdict.error.message


def test_two_different_client_errors_are_not_one() -> None:
    box = _errors_box(
        ErrorBody(code="prompt_too_long", message="long"),
        ErrorBody(code="invalid_request", message="bad temperature"),
    )
    verdict = decide(box, _policy(models=["fast", "slow"]), A + 10)
    assert verdict is not None
    assert verdict.error is not None
    assert verdict.error.code == ALL_FAILED

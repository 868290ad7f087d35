"""The decision: a pure function of (request, policy, now). No clock reads, no I/O.

The request is a ``services.common.arrivals.RequestView``: what decide reads of it (its
id and attributes, whether it streams, its clock, its grant, the first score of each
model and when it arrived). The rendezvous's ``Mailbox`` is one; ``rdv compare``'s
counterfactual builds a ``RequestSnapshot``. Time is elapsed monotonic ms since the
request arrived. The effective deadline is the earlier of the request's own deadline
and the policy's ``deadline_ms``. A decision at ``now`` considers the scores that
arrived by ``min(now, deadline)``, so a timer that fires a little late decides exactly
as one that fired on time.

Before the deadline (``decide`` may return None: wait):

0. OOD gate (when the policy has one): while the detector has not reported and the
   gate's ``wait_ms`` has not passed, wait. A flagged request gets the gate's answer:
   the safe reply at once, or the named fallback model's ok score (waited for up to
   the deadline; the default if it fails). Otherwise (clear, or unknown: the detector
   failed or stayed silent past the wait) the steps below apply, and the verdict
   carries the gate's finding.
1. Canary branch (the request falls in the canary share): the canary model's ok
   score wins at once. The canary gets the first stage's window to answer: while it
   has not reported and the first stage has not ended, nothing else is answered.
   Once it failed, was skipped or the window passed, the normal schedule applies
   (its ok answer still wins whenever it has arrived).
2. Normal schedule: the current stage is the first whose boundary is still ahead.
   The most preferred acceptable model with an ok score answers at once. A stage
   whose acceptable models have all reported without an ok is exhausted: the next
   stage applies at once. When every remaining stage is exhausted (and no canary is
   pending) the all-failed answer (below) is given at once.

At or past the deadline (never None): the canary's ok score (canary branch), else the
last stage's most preferred ok score, else the all-failed answer when the last stage is
exhausted (and no canary is pending), else the default.

Streaming (a request whose payload has ``stream`` true): its client sees one model's
text as it is generated, so that model is chosen up front. ``stream_grant`` names it
once the OOD gate (if any) has cleared or stopped waiting, before the deadline: the
canary for a request in the canary share (unless it already failed), else the most
preferred model of the current stage that has not failed (later stages when every
one of it has). A flagged request gets no grant: the gate's answer as usual. Once a
request holds a grant (``RequestView.grant``), ``decide`` answers with the granted
model's ok score whenever it arrives before the deadline (a deadline-cut partial
answer included), with the all-failed answer when it fails, and with the default when
it stays silent until the deadline; no other model's score can answer it. The verdict
carries the gate's finding from the time of the grant. The reason is the one the
granted model's answer would have had: ``canary`` in the canary share, else
``champion_in_time`` or ``fallback:<i>`` for the first stage from the current one that
accepts it (else the last earlier stage that does).

``accept: any`` takes roster models in roster order (every model, in arrival order,
when the roster is empty), except scores whose role is detector, decoy or canary:
those are returned only when named.

Reasons (``Verdict.reason``):

- ``champion_in_time``: an ok answer picked by the first stage's accept list;
- ``fallback:<i>``: an ok answer picked by stage ``i`` (i >= 1; at the deadline, the last);
- ``canary``: the canary model's ok answer, for a request in the canary share;
- ``ood_safe_reply``: the OOD gate's configured safe reply, for a flagged request;
- ``ood_fallback``: the OOD gate's fallback model's ok answer, for a flagged request;
- ``all_failed``: every model that could still be accepted (or the granted one)
  reported error or skipped: the all-failed answer; or a flagged request's fallback
  model failed: the default;
- ``deadline_exceeded``: the default, because the deadline came with nothing acceptable;
- ``overloaded``, ``no_policy``: verdicts the service gives without a request view
  (``error_verdict``).

A default answer has ``chosen_model`` None and carries the policy's ``default``
(an error, or a configured output with ``error`` None). The all-failed answer has
``chosen_model`` None too: when every error among the failures has the same
client-error code (``services.common.errors.CLIENT_ERROR_CODES``: the input was at
fault, e.g. a prompt too long for the context), that error (the first failure's code
and message); else the default when it is an output (a safe reply); else an
``all_failed`` error naming each model's failure (``[code] message``), whatever error
the default names.

Propensity (the probability of the branch that answered, for off-policy evaluation):
1.0 when the policy has no canary; otherwise ``share`` for every verdict of a request
in the canary share (whichever model or default answered) and ``1 - share`` for every
verdict of a request outside it. Canary membership hashes (sha256) the endpoint, the
canary model and the key: the sticky attribute's value when the request carries it,
else the request id. It is stable across processes, and raising the share only adds
requests to the canary branch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

from pydantic import JsonValue

from services.common import bandit
from services.common.arrivals import Arrival, Grant, RequestView
from services.common.bandit import NOTHING_LEARNED, Draw, Learned
from services.common.errors import CLIENT_ERROR_CODES
from services.common.messages import ErrorBody, OodCheck, Role, ScoreStatus
from services.common.policy import Policy, Stage

CHAMPION_IN_TIME = "champion_in_time"
CANARY = "canary"
BANDIT = "bandit"
OOD_SAFE_REPLY = "ood_safe_reply"
OOD_FALLBACK = "ood_fallback"
ALL_FAILED = "all_failed"
DEADLINE_EXCEEDED = "deadline_exceeded"
OVERLOADED = "overloaded"
NO_POLICY = "no_policy"

_NOT_BY_ANY = frozenset({Role.DETECTOR, Role.DECOY, Role.CANARY})
_HASH_SPACE = float(2**64)


def fallback_reason(stage_index: int) -> str:
    """The reason for an answer picked by stage ``stage_index`` (>= 1)."""
    return f"fallback:{stage_index}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer: a model's output, or the default (chosen_model None)."""

    chosen_model: str | None
    reason: str
    output: JsonValue
    error: ErrorBody | None
    propensity: float
    ood: OodCheck | None = None  # the OOD gate's finding; None without a gate
    draw: Draw | None = None  # the bandit's draw, when the policy has a bandit stage


def error_verdict(reason: str, code: str, message: str) -> Verdict:
    """An error verdict outside the policy (e.g. ``OVERLOADED``, ``NO_POLICY``)."""
    return Verdict(None, reason, None, ErrorBody(code=code, message=message), 1.0)


def deadline_at(request: RequestView, policy: Policy) -> float:
    """Monotonic ms of the effective deadline (the request's, capped by the policy's)."""
    return min(request.deadline_at_ms, request.arrived_ms + policy.deadline_ms)


def in_canary(request: RequestView, policy: Policy) -> bool:
    """Whether the request falls in the policy's canary share (False without a canary)."""
    canary = policy.canary
    if canary is None:
        return False
    attribute = canary.sticky_attribute
    sticky = None if attribute is None else request.attributes.get(attribute)
    key = f"a:{sticky}" if sticky is not None else f"r:{request.request_id}"
    digest = hashlib.sha256(f"{policy.endpoint}\0{canary.model}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPACE < canary.share


def propensity(request: RequestView, policy: Policy) -> float:
    """The probability of the branch the request was routed through (see module doc)."""
    if policy.canary is None:
        return 1.0
    share = policy.canary.share
    return share if in_canary(request, policy) else 1.0 - share


def decide(
    request: RequestView, policy: Policy, now_ms: float, learned: Learned = NOTHING_LEARNED
) -> Verdict | None:
    """The verdict at ``now_ms``, or None to wait (never None at or past the deadline).
    ``learned``: the endpoint's rewards so far, for a bandit stage (see bandit_draw)."""
    dead = deadline_at(request, policy)
    final = now_ms >= dead
    cut = min(now_ms, dead)
    seen = {m: a for m, a in request.scores.items() if a.at_ms <= cut}
    weight = propensity(request, policy)
    grant = request.grant
    if grant is not None:
        chance = bandit_draw(request, policy, learned, grant.ood)
        drawn = _drawn(policy, chance)
        verdict = _granted(request, drawn, grant, seen, cut=cut, final=final, weight=weight)
        return _with_draw(policy, verdict, chance)
    check = ood_check(policy, seen, cut - request.arrived_ms, final)
    if check is WAIT:
        return None
    if check is not None and check.status == "flagged":
        return _flagged(policy, check, seen, final, weight)
    chance = bandit_draw(request, policy, learned, check)
    verdict = _schedule(request, _drawn(policy, chance), seen, cut=cut, final=final, weight=weight)
    verdict = _with_draw(policy, verdict, chance)
    return verdict if verdict is None or check is None else replace(verdict, ood=check)


def _with_draw(policy: Policy, verdict: Verdict | None, chance: Draw | None) -> Verdict | None:
    """The verdict with the draw recorded and, when the draw shaped it, its probability
    in the propensity."""
    if verdict is None or chance is None:
        return verdict
    if _drew(policy, verdict):
        return replace(verdict, propensity=verdict.propensity * chance.propensity, draw=chance)
    return replace(verdict, draw=chance)


def bandit_draw(
    request: RequestView, policy: Policy, learned: Learned, check: OodCheck | None
) -> Draw | None:
    """The bandit stage's arm for this request (None without a bandit stage): drawn from
    the arms' Thompson-sampling probabilities in the request's context bucket
    (services.common.bandit), fixed by the request id."""
    index = policy.bandit_stage()
    spec = policy.bandit
    if index is None or spec is None:
        return None
    arms = policy.stages[index].accept
    assert arms != "any", "the policy refuses a bandit stage without a list"
    return bandit.draw(
        arms,
        context_bucket(request, policy, check),
        learned,
        u=bandit.uniform_draw(policy.endpoint, policy.version, request.request_id),
        reward=spec.reward,
        min_share=spec.min_share,
        champion=spec.champion,
        champion_floor=spec.champion_floor,
    )


def context_bucket(request: RequestView, policy: Policy, check: OodCheck | None) -> str:
    """The bandit's context bucket of a request (``bandit.ALL`` without a context)."""
    context = policy.bandit.context if policy.bandit is not None else None
    if context is None:
        return bandit.ALL
    if context.ood_score is not None:
        return bandit.ood_bucket(check.score if check is not None else None, context.ood_score)
    assert context.attribute is not None
    return bandit.attribute_bucket(request.attributes.get(context.attribute), context.values)


def _drawn(policy: Policy, chance: Draw | None) -> Policy:
    """The policy as it applies to one request: its bandit stage accepts the drawn arm."""
    index = policy.bandit_stage()
    if chance is None or index is None:
        return policy
    stages = list(policy.stages)
    stages[index] = stages[index].model_copy(update={"accept": (chance.arm,)})
    return policy.model_copy(update={"stages": tuple(stages)})


def _drew(policy: Policy, verdict: Verdict) -> bool:
    """Whether the draw shaped this verdict: it came from the bandit stage or a later one
    (the canary's answer and answers of earlier stages did not depend on it)."""
    index = policy.bandit_stage()
    if index is None or verdict.reason == CANARY:
        return False
    if verdict.reason == BANDIT or verdict.chosen_model is None:
        return True
    if verdict.reason == CHAMPION_IN_TIME:
        return index == 0
    if verdict.reason.startswith("fallback:"):
        return int(verdict.reason.removeprefix("fallback:")) > index
    return False


def stream_grant(
    request: RequestView, policy: Policy, now_ms: float, learned: Learned = NOTHING_LEARNED
) -> Grant | None:
    """The grant of a streaming request that has none yet, once it can be made (see the
    module doc); None for a request that does not stream, is granted already, must
    wait for its OOD gate, was flagged, is at its deadline, or has no model left."""
    if request.grant is not None or not request.streams:
        return None
    dead = deadline_at(request, policy)
    if now_ms >= dead:
        return None
    seen = {m: a for m, a in request.scores.items() if a.at_ms <= now_ms}
    check = ood_check(policy, seen, now_ms - request.arrived_ms, final=False)
    if check is WAIT or (check is not None and check.status == "flagged"):
        return None
    drawn = _drawn(policy, bandit_draw(request, policy, learned, check))
    model = _stream_model(request, drawn, seen, now_ms)
    return None if model is None else Grant(model, check)


def _stream_model(
    request: RequestView, policy: Policy, seen: dict[str, Arrival], now_ms: float
) -> str | None:
    """The canary (canary share) or the most preferred model of the current stage that
    has not failed; None when no stage has one left."""
    canary = policy.canary.model if policy.canary and in_canary(request, policy) else None
    if canary is not None and (canary not in seen or seen[canary].status is ScoreStatus.OK):
        return canary
    bounds = _bounds(request, policy, deadline_at(request, policy))
    first = next(i for i, b in enumerate(bounds) if b > now_ms)
    detector = policy.ood.detector if policy.ood is not None else None
    for stage in policy.stages[first:]:
        for model in _candidates(policy, stage, seen):
            score = seen.get(model)
            if stage.accept == "any" and (
                model in (detector, canary) or (score is not None and score.role in _NOT_BY_ANY)
            ):
                continue
            if score is None or score.status is ScoreStatus.OK:
                return model
    return None


def _granted(
    request: RequestView,
    policy: Policy,
    grant: Grant,
    seen: dict[str, Arrival],
    *,
    cut: float,
    final: bool,
    weight: float,
) -> Verdict | None:
    """A granted streaming request: only the granted model's score can answer it."""
    score = seen.get(grant.model)
    if score is None:
        verdict = _default(policy, DEADLINE_EXCEEDED, weight) if final else None
    elif score.status is not ScoreStatus.OK:
        verdict = _all_failed(policy, {grant.model: score}, weight)
    else:
        reason = _granted_reason(request, policy, grant.model, cut, final)
        verdict = Verdict(grant.model, reason, score.output, None, weight)
    return None if verdict is None else replace(verdict, ood=grant.ood)


def _granted_reason(
    request: RequestView, policy: Policy, model: str, cut: float, final: bool
) -> str:
    """The reason of the granted model's answer (see the module doc)."""
    canary = policy.canary
    if canary is not None and canary.model == model and in_canary(request, policy):
        return CANARY
    bounds = _bounds(request, policy, deadline_at(request, policy))
    first = len(bounds) - 1 if final else next(i for i, b in enumerate(bounds) if b > cut)
    accepting = [
        i for i, stage in enumerate(policy.stages) if stage.accept == "any" or model in stage.accept
    ]
    later = [i for i in accepting if i >= first]
    index = later[0] if later else accepting[-1] if accepting else first
    return _stage_reason(policy, index)


def _stage_reason(policy: Policy, index: int) -> str:
    """The reason of an answer picked in stage ``index``."""
    if policy.stages[index].pick == "bandit":
        return BANDIT
    return CHAMPION_IN_TIME if index == 0 else fallback_reason(index)


WAIT = OodCheck(status="unknown", detector="")
"""ood_check's answer while the detector may still report: no verdict yet."""


def ood_check(
    policy: Policy, seen: dict[str, Arrival], elapsed_ms: float, final: bool
) -> OodCheck | None:
    """The OOD gate's finding from the scores seen ``elapsed_ms`` after arrival: None
    without a gate, ``WAIT`` while the detector may still report in time."""
    gate = policy.ood
    if gate is None:
        return None
    score = seen.get(gate.detector)
    if score is None:
        if elapsed_ms < gate.wait_ms and not final:
            return WAIT
        return OodCheck(status="unknown", detector=gate.detector)
    return read_detector(gate.detector, score)


def read_detector(detector: str, score: Arrival) -> OodCheck:
    """A detector's score as a finding: ``is_ood`` flags; anything unreadable is unknown."""
    out = score.output
    flag = out.get("is_ood") if isinstance(out, dict) else None
    if score.status is not ScoreStatus.OK or not isinstance(flag, bool):
        return OodCheck(status="unknown", detector=detector)
    assert isinstance(out, dict)
    raw = out.get("ood_score")
    value = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
    return OodCheck(
        status="flagged" if flag else "clear",
        detector=detector,
        score=value if value is not None and math.isfinite(value) else None,
    )


def _flagged(
    policy: Policy, check: OodCheck, seen: dict[str, Arrival], final: bool, weight: float
) -> Verdict | None:
    """A flagged request: the safe reply, or the fallback model's answer when it has one."""
    assert policy.ood is not None
    when = policy.ood.when_flagged
    if when.model is None:
        return Verdict(None, OOD_SAFE_REPLY, when.output, None, weight, check)
    score = seen.get(when.model)
    if score is not None and score.status is ScoreStatus.OK:
        return Verdict(when.model, OOD_FALLBACK, score.output, None, weight, check)
    if score is None and not final:
        return None
    reason = DEADLINE_EXCEEDED if score is None else ALL_FAILED
    return replace(_default(policy, reason, weight), ood=check)


def _schedule(
    request: RequestView,
    policy: Policy,
    seen: dict[str, Arrival],
    *,
    cut: float,
    final: bool,
    weight: float,
) -> Verdict | None:
    """Steps 1 and 2 of the module doc (and the deadline rule)."""
    bounds = _bounds(request, policy, deadline_at(request, policy))
    canary = policy.canary.model if policy.canary and in_canary(request, policy) else None
    if canary is not None:
        score = seen.get(canary)
        if score is not None and score.status is ScoreStatus.OK:
            return Verdict(canary, CANARY, score.output, None, weight)
        if score is None and cut < bounds[0]:
            return None  # the canary's window (the first stage) is still open
    first = len(bounds) - 1 if final else next(i for i, b in enumerate(bounds) if b > cut)
    for index in range(first, len(policy.stages)):
        stage = policy.stages[index]
        pick = _pick(policy, stage, seen)
        if pick is not None:
            return Verdict(pick[0], _stage_reason(policy, index), pick[1].output, None, weight)
        if not _exhausted(policy, stage, seen):
            return _default(policy, DEADLINE_EXCEEDED, weight) if final else None
    if canary is not None and canary not in seen:
        return _default(policy, DEADLINE_EXCEEDED, weight) if final else None
    return _all_failed(policy, seen, weight)


def next_check(request: RequestView, policy: Policy, now_ms: float) -> float:
    """Monotonic ms at which the verdict can next change without a new score: the next
    stage boundary after ``now_ms``, or the deadline (returned once it has passed)."""
    dead = deadline_at(request, policy)
    bounds = _bounds(request, policy, dead)
    if policy.ood is not None:  # the end of the gate's wait
        bounds = sorted([*bounds, min(request.arrived_ms + policy.ood.wait_ms, dead)])
    return next((b for b in bounds if b > now_ms), dead)


def verdict_latencies(request: RequestView) -> dict[str, float]:
    """Per model: when its score arrived minus when the request did."""
    return {m: a.at_ms - request.arrived_ms for m, a in request.scores.items()}


def in_time_and_late(
    request: RequestView, policy: Policy, now_ms: float
) -> tuple[list[str], list[str]]:
    """For a Decision made at ``now_ms``: the models whose scores the decision considered
    (arrival order), and the rest, sorted: roster models without a score yet and scores
    that arrived after the deadline."""
    cut = min(now_ms, deadline_at(request, policy))
    in_time = [m for m, a in request.scores.items() if a.at_ms <= cut]
    late = (set(policy.models) | set(request.scores)) - set(in_time)
    return in_time, sorted(late)


def _bounds(request: RequestView, policy: Policy, dead: float) -> list[float]:
    """Monotonic end of each stage (the last ends at the deadline)."""
    start = request.arrived_ms
    return [
        dead if s.until_ms == "deadline" else min(start + s.until_ms, dead) for s in policy.stages
    ]


def _candidates(policy: Policy, stage: Stage, seen: dict[str, Arrival]) -> list[str]:
    if stage.accept != "any":
        return list(stage.accept)
    return list(policy.models) if policy.models else list(seen)


def _pick(policy: Policy, stage: Stage, seen: dict[str, Arrival]) -> tuple[str, Arrival] | None:
    """The most preferred acceptable ok score of a stage (and its model), if any arrived."""
    for model in _candidates(policy, stage, seen):
        score = seen.get(model)
        if score is None or score.status is not ScoreStatus.OK:
            continue
        if stage.accept == "any" and score.role in _NOT_BY_ANY:
            continue
        return model, score
    return None


def _exhausted(policy: Policy, stage: Stage, seen: dict[str, Arrival]) -> bool:
    """True when no model of the stage can still give an acceptable answer."""
    if stage.accept == "any" and not policy.models:
        return False  # any model at all may still answer
    return all(model in seen for model in _candidates(policy, stage, seen))


def _all_failed(policy: Policy, seen: dict[str, Arrival], weight: float) -> Verdict:
    """Every model that could answer failed. When they all refused the input itself
    for one reason (a prompt too long for the context), that is the answer: a client
    error. Otherwise the configured safe reply, or an ``all_failed`` error."""
    failures = [s.error for s in seen.values() if s.status is ScoreStatus.ERROR]
    codes = {e.code if e is not None else "" for e in failures}
    first = failures[0] if failures else None
    if first is not None and len(codes) == 1 and first.code in CLIENT_ERROR_CODES:
        return Verdict(None, ALL_FAILED, None, first, weight)
    if policy.default.error is None:
        return _default(policy, ALL_FAILED, weight)
    detail = "; ".join(sorted(f"{m}: {_describe(s)}" for m, s in seen.items()))
    return Verdict(
        None,
        ALL_FAILED,
        None,
        ErrorBody(code=ALL_FAILED, message=f"every model failed ({detail})"[:2000]),
        weight,
    )


def _describe(score: Arrival) -> str:
    """A failed score for the all-failed message: ``[code] message``, or its status."""
    error = score.error
    return score.status.value if error is None else f"[{error.code}] {error.message}"


def _default(policy: Policy, reason: str, weight: float) -> Verdict:
    answer = policy.default
    return Verdict(None, reason, answer.output, answer.error_body(), weight)

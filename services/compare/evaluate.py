"""Off-policy evaluation of a candidate policy on the archive (``rdv policy evaluate``).

Each archived request of the window with a decision and feedback becomes a
``RequestSnapshot`` holding every model's first score (status, role, output) at the
latency it had (score finished minus request created), its attributes (a canary's
sticky key) and its own deadline. ``target_distribution`` replays the rendezvous's own
``decide`` on it, at every moment its verdict can change, and gives the policy's
answer distribution: the one place that knows how a policy answers an archived
request. A policy with a canary answers with the canary branch's choice with
probability ``share`` and the normal branch's otherwise (the hash that routes a
request is independent of its reward, so the branch counts as random).

The logging probability of the logged answer: for decisions made by the policy in force
(same version) the in-force policy's own answer distribution replayed on the snapshot
(a canary branch whose canary failed answers with the champion, as the other branch
does: the answer's probability is then the sum of both), else, or where the replay
does not give the logged answer (e.g. a score the archive lacks), the recorded branch
propensity. Streamed requests are replayed as if they did not stream.

A policy with a bandit stage answers with each arm's answer weighted by the arm's
probability in the request's context bucket, computed from a given learned state (``rdv
policy evaluate`` folds it from the same archive, as the learner would publish it now).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from services.common.arrivals import Arrived, RequestSnapshot
from services.common.bandit import NOTHING_LEARNED, Learned, arm_probabilities
from services.common.decide import context_bucket, decide, next_check, ood_check
from services.common.messages import MODEL_ERROR, ErrorBody, OodCheck, Role, ScoreStatus
from services.common.policy import Policy, Stage
from services.compare.intervals import Z95, Interval, mean_interval
from services.compare.offpolicy import Answer, PolicyEstimate, Replayed, evaluate_policy

_ROWS = """
WITH r AS (
    SELECT request_id, created_ms, deadline_ms, attributes FROM requests
    WHERE endpoint = $endpoint
      AND ($since IS NULL OR created_ms >= $since)
      AND ($until IS NULL OR created_ms < $until)
),
f AS (
    SELECT request_id, arg_max(reward, received_ms) AS reward FROM feedback GROUP BY request_id
)
SELECT r.request_id, r.created_ms, r.deadline_ms, r.attributes,
       d.chosen_model, d.propensity, d.policy_version, f.reward
FROM r JOIN decisions d USING (request_id) JOIN f USING (request_id)
ORDER BY r.created_ms, r.request_id
"""
_SCORES = """
SELECT s.request_id, s.model, s.role, s.status, s.output, s.finished_ms - r.created_ms
FROM eval_rows r JOIN scores s USING (request_id)
ORDER BY s.request_id, s.finished_ms, s.model
"""
_ARCHIVED_ERROR = ErrorBody(code=MODEL_ERROR, message="archived error")


@dataclass(frozen=True, slots=True)
class Archived:
    """One archived decision with feedback, and its request as a snapshot."""

    snapshot: RequestSnapshot
    chosen: Answer
    propensity: float  # the branch propensity the rendezvous recorded
    reward: float
    policy_version: int | None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The candidate and the policy in force, through the same estimators."""

    requests: int  # decisions with feedback in the window
    candidate: PolicyEstimate
    in_force: PolicyEstimate | None
    on_policy: Interval | None  # mean reward of the in-force version's own decisions
    in_force_version: int | None
    replayed_propensities: int  # rows whose logging probability came from the replay
    agreement: float | None  # in-force rows whose replay gives the logged answer

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "candidate": self.candidate.as_dict(),
            "in_force": None if self.in_force is None else self.in_force.as_dict(),
            "on_policy": None if self.on_policy is None else self.on_policy.as_dict(),
            "in_force_version": self.in_force_version,
            "replayed_propensities": self.replayed_propensities,
            "replay_agreement": self.agreement,
        }


def target_distribution(
    snapshot: RequestSnapshot, policy: Policy, learned: Learned = NOTHING_LEARNED
) -> dict[Answer, float]:
    """The policy's answer distribution for one archived request (see the module doc)."""
    index = policy.bandit_stage()
    if index is not None:
        return _bandit_distribution(snapshot, policy, index, learned)
    canary = policy.canary
    if canary is None:
        return {replay_answer(snapshot, policy): 1.0}
    inside = policy.model_copy(update={"canary": canary.model_copy(update={"share": 1.0})})
    outside = policy.model_copy(update={"canary": None})
    out: dict[Answer, float] = {}
    for branch, p in ((inside, canary.share), (outside, 1.0 - canary.share)):
        answer = replay_answer(snapshot, branch)
        out[answer] = out.get(answer, 0.0) + p
    return out


def _bandit_distribution(
    snapshot: RequestSnapshot, policy: Policy, index: int, learned: Learned
) -> dict[Answer, float]:
    """A bandit stage's answers: each arm's probability in the request's bucket (as the
    rendezvous computes it from ``learned``) times the answer with that arm drawn."""
    spec = policy.bandit
    arms = policy.stages[index].accept
    assert spec is not None, "the policy checks its bandit stage"
    assert arms != "any", "the policy checks its bandit stage"
    check = _final_check(snapshot, policy)
    probs = arm_probabilities(
        arms,
        learned.buckets.get(context_bucket(snapshot, policy, check), {}),
        reward=spec.reward,
        min_share=spec.min_share,
        champion=spec.champion,
        champion_floor=spec.champion_floor,
    )
    out: dict[Answer, float] = {}
    for arm, p in probs.items():
        stages = list(policy.stages)
        stages[index] = Stage(until_ms=stages[index].until_ms, accept=(arm,))
        fixed = policy.model_copy(update={"stages": tuple(stages), "bandit": None})
        for answer, q in target_distribution(snapshot, fixed).items():
            out[answer] = out.get(answer, 0.0) + p * q
    return out


def _final_check(snapshot: RequestSnapshot, policy: Policy) -> OodCheck | None:
    """The OOD gate's finding once every archived score is in (for the bucket)."""
    return ood_check(policy, dict(snapshot.scores), math.inf, final=True)


def replay_answer(snapshot: RequestSnapshot, policy: Policy) -> Answer:
    """The model ``decide`` answers the snapshot with (None: the default), deciding at
    each arrival and each moment ``next_check`` names, as the rendezvous does."""
    arrivals = sorted({a.at_ms for a in snapshot.scores.values()})
    now = snapshot.arrived_ms
    while True:
        verdict = decide(snapshot, policy, now)
        if verdict is not None:
            return verdict.chosen_model
        later = [t for t in arrivals if t > now]
        now = min([*later, next_check(snapshot, policy, now)])


def load_archived(
    con: duckdb.DuckDBPyConnection,
    endpoint: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> list[Archived]:
    """The endpoint's decisions with feedback in [since, until), oldest first."""
    params = {"endpoint": endpoint, "since": since_ms, "until": until_ms}
    con.execute("CREATE OR REPLACE TEMP TABLE eval_rows AS " + _ROWS, params)
    scores: dict[str, dict[str, Arrived]] = {}
    for rid, model, role, status, output, latency in con.execute(_SCORES).fetchall():
        if latency is not None:
            scores.setdefault(rid, {}).setdefault(model, _arrived(role, status, output, latency))
    out = []
    for rid, created, deadline, attributes, chosen, p, version, reward in con.execute(
        "SELECT * FROM eval_rows"
    ).fetchall():
        snapshot = RequestSnapshot(
            request_id=rid,
            arrived_ms=0.0,
            deadline_at_ms=max(float(deadline - created), 0.0),
            scores=scores.get(rid, {}),
            attributes=_attributes(attributes),
        )
        prop = 1.0 if p is None else float(p)
        out.append(Archived(snapshot, chosen, prop, float(reward), version))
    return out


def evaluate(
    rows: Sequence[Archived],
    candidate: Policy,
    in_force: Policy | None = None,
    z: float = Z95,
    learned: Learned = NOTHING_LEARNED,
) -> Evaluation:
    """The candidate's (and the policy in force's) estimated mean reward over ``rows``.
    ``learned``: the rewards a bandit stage draws from (what the learner would publish
    now). A bandit policy's logged draws came from the state of their time: their
    recorded propensities are used as they are, never replayed."""
    if not rows:
        raise ValueError("no archived decisions with feedback in the window")
    logging, replayed, agreed, own = [], 0, 0, []
    replayable = in_force is not None and in_force.bandit_stage() is None
    for row in rows:
        p = row.propensity
        if in_force is not None and row.policy_version == in_force.version:
            own.append(row.reward)
        if replayable and in_force is not None and row.policy_version == in_force.version:
            replay = target_distribution(row.snapshot, in_force).get(row.chosen, 0.0)
            if replay > 0:
                p, replayed, agreed = replay, replayed + 1, agreed + 1
        logging.append(p)
    candidate_est = evaluate_policy(_replayed(rows, logging, candidate, learned), z)
    in_force_est = None
    if in_force is not None:
        in_force_est = evaluate_policy(_replayed(rows, logging, in_force, learned), z)
    return Evaluation(
        requests=len(rows),
        candidate=candidate_est,
        in_force=in_force_est,
        on_policy=mean_interval(own, z) if own else None,
        in_force_version=None if in_force is None else in_force.version,
        replayed_propensities=replayed,
        agreement=agreed / len(own) if own and replayable else None,
    )


def _replayed(
    rows: Sequence[Archived], logging: Sequence[float], policy: Policy, learned: Learned
) -> list[Replayed]:
    return [
        Replayed(
            row.chosen,
            p,
            row.reward,
            target_distribution(row.snapshot, policy, learned),
            fold_of(row.snapshot.request_id),
        )
        for row, p in zip(rows, logging, strict=True)
    ]


def fold_of(request_id: str) -> int:
    """A request's cross-fitting fold: stable across runs (crc32 of its id)."""
    return zlib.crc32(request_id.encode()) & 1


def _arrived(role: str | None, status: str, output: str | None, latency: float) -> Arrived:
    state = ScoreStatus(status)
    return Arrived(
        status=state,
        at_ms=max(float(latency), 0.0),
        output=_json(output) if state is ScoreStatus.OK else None,
        role=_role(role),
        error=_ARCHIVED_ERROR if state is ScoreStatus.ERROR else None,
    )


def _role(text: str | None) -> Role:
    """The archived role; an unknown or missing one counts as a challenger."""
    try:
        return Role(text or "")
    except ValueError:
        return Role.CHALLENGER


def _json(text: str | None) -> Any:
    """An archived output (JSON text); unreadable text stays text."""
    if text is None:
        return "archived"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _attributes(value: object) -> Mapping[str, str]:
    """The archived attributes (DuckDB gives a MAP as a dict; NULL as None)."""
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}

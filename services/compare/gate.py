"""The promotion gate: challenger against champion on always-valid confidence sequences
(services.compare.sequential), so it may be checked after every request.

Metrics, each a stream of per-request challenger-minus-champion differences:

- ``within_deadline`` (higher is better): ok and finished by the request's deadline,
  on the requests both models scored;
- ``error_rate`` (lower is better): the score is an error, on the same requests;
- ``latency`` (lower is better): log of the challenger's latency over the champion's,
  where both are ok (the report shows ``exp`` of it: the geometric-mean ratio); worse
  only beyond ``latency_margin`` (default 0.05: about 5% slower);
- ``reward`` (higher is better), from feedback, when the challenger is the policy's
  canary: per request with feedback decided under that policy version, ``r * (1[canary
  branch] / share - 1[other branch] / (1 - share))``, the inverse-propensity contrast
  of the two branches (its mean is the reward of answering through the canary branch
  minus that of the normal one; the branch is recomputed with decide's own hash); or,
  when the champion and the challenger are both arms of the policy's bandit stage,
  per request with feedback answered by the bandit under that policy version, ``r *
  (1[challenger drawn and answered] - 1[champion drawn and answered]) / p``, ``p`` the
  logged propensity of the draw: an inverse-propensity estimate of the difference of
  their rewards had each answered every request (other arms' answers contribute 0).

Every metric's sequence is at level ``alpha / k`` (k: the metrics with data;
Bonferroni), so any statement the gate makes is wrong with probability at most alpha,
however often it is checked. The primary metric is the reward when it has data, else
the within-deadline rate. The gate says ``reject`` when any metric is significantly
worse, ``promote`` when none is and the primary is significantly better (or, with a
``non_inferiority`` margin, when the primary is surely not worse by more than it), else
``wait``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import duckdb

from services.common.arrivals import RequestSnapshot
from services.common.decide import in_canary
from services.common.policy import Policy
from services.compare.sequential import (
    DEFAULT_TUNED_N,
    MIN_N,
    Call,
    ConfidenceSequence,
    Direction,
    Running,
    call,
    confidence_sequence,
)

WITHIN_DEADLINE, ERROR_RATE, LATENCY, REWARD = "within_deadline", "error_rate", "latency", "reward"
METRICS = (WITHIN_DEADLINE, ERROR_RATE, LATENCY, REWARD)
PROMOTE, WAIT, REJECT = "promote", "wait", "reject"
TEST = (
    "asymptotic confidence sequence, normal mixture (Waudby-Smith et al. 2024; "
    "the mSPRT of Johari et al.), Bonferroni over the metrics"
)


@dataclass(frozen=True, slots=True)
class GateConfig:
    alpha: float = 0.05
    tuned_n: float = DEFAULT_TUNED_N
    min_n: int = MIN_N
    latency_margin: float = 0.05  # in log ratio: about 5%
    non_inferiority: float | None = None  # promote when the primary is not worse by this

    def direction(self, metric: str) -> Direction:
        if metric == LATENCY:
            return Direction(higher=False, margin=self.latency_margin)
        return Direction(higher=metric in (WITHIN_DEADLINE, REWARD))


@dataclass
class Tally:
    """Running sums per metric: the differences, and each side's own values."""

    diff: dict[str, Running] = field(default_factory=lambda: {m: Running() for m in METRICS})
    champion: dict[str, Running] = field(default_factory=lambda: {m: Running() for m in METRICS})
    challenger: dict[str, Running] = field(default_factory=lambda: {m: Running() for m in METRICS})

    def add(self, metric: str, champion: float, challenger: float) -> None:
        self.diff[metric].add(challenger - champion)
        self.champion[metric].add(champion)
        self.challenger[metric].add(challenger)

    def add_pair(
        self,
        deadline_ms: float,
        champion: tuple[str, float | None],
        challenger: tuple[str, float | None],
    ) -> None:
        """One request both models scored: each side's (status, latency ms)."""
        (a_status, a_lat), (b_status, b_lat) = champion, challenger
        self.add(
            WITHIN_DEADLINE,
            _within(a_status, a_lat, deadline_ms),
            _within(b_status, b_lat, deadline_ms),
        )
        self.add(ERROR_RATE, float(a_status == "error"), float(b_status == "error"))
        if a_status == "ok" and b_status == "ok" and a_lat is not None and b_lat is not None:
            self.add(LATENCY, math.log(max(a_lat, 0.1)), math.log(max(b_lat, 0.1)))

    def add_reward(self, reward: float, canary_branch: bool, share: float) -> None:
        """One request with feedback under a canary policy (see the module doc)."""
        term = reward / share if canary_branch else -reward / (1.0 - share)
        self.diff[REWARD].add(term)
        (self.challenger if canary_branch else self.champion)[REWARD].add(reward)

    def add_bandit_reward(self, reward: float, side: int, propensity: float) -> None:
        """One bandit answer with feedback: ``side`` +1 challenger, -1 champion, 0 other."""
        self.diff[REWARD].add(side * reward / propensity)
        if side:
            (self.challenger if side > 0 else self.champion)[REWARD].add(reward)


def _within(status: str, latency: float | None, deadline_ms: float) -> float:
    return float(status == "ok" and latency is not None and latency <= deadline_ms)


@dataclass(frozen=True, slots=True)
class MetricResult:
    metric: str
    champion: float | None  # the champion's mean (latency: geometric mean, ms)
    challenger: float | None
    sequence: ConfidenceSequence
    call: Call

    def as_dict(self) -> dict[str, Any]:
        seq = self.sequence
        return {
            "metric": self.metric,
            "champion": self.champion,
            "challenger": self.challenger,
            "difference": _finite(seq.mean),
            "low": _finite(seq.low),
            "high": _finite(seq.high),
            "n": seq.n,
            "e_value": _finite(seq.e_value),
            "p_value": seq.p_value,
            "alpha": seq.alpha,
            "call": self.call.value,
        }


@dataclass(frozen=True, slots=True)
class GateResult:
    decision: str  # promote, wait, reject
    reason: str
    primary: str
    alpha: float
    metrics: list[MetricResult]

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "primary": self.primary,
            "alpha": self.alpha,
            "test": TEST,
            "metrics": [m.as_dict() for m in self.metrics],
        }

    def worse(self) -> list[MetricResult]:
        return [m for m in self.metrics if m.call is Call.WORSE]


def judge(tally: Tally, config: GateConfig = GateConfig()) -> GateResult:
    """The gate's decision on everything tallied so far (see the module doc)."""
    present = [m for m in METRICS if tally.diff[m].n >= 2]
    each = config.alpha / max(len(present), 1)
    results = []
    for metric in present:
        seq = confidence_sequence(tally.diff[metric], each, config.tuned_n)
        verdict = call(seq, config.direction(metric), config.min_n)
        results.append(MetricResult(metric, *_sides(tally, metric), seq, verdict))
    primary = REWARD if tally.diff[REWARD].n >= config.min_n else WITHIN_DEADLINE
    worse = [r.metric for r in results if r.call is Call.WORSE]
    if worse:
        return GateResult(REJECT, f"worse on {', '.join(worse)}", primary, config.alpha, results)
    main = next((r for r in results if r.metric == primary), None)
    if main is not None and main.call is Call.BETTER:
        reason = f"{primary} better, no metric worse"
        return GateResult(PROMOTE, reason, primary, config.alpha, results)
    margin = config.non_inferiority
    settled = main is not None and main.sequence.n >= config.min_n
    if settled and margin is not None and main is not None and main.sequence.low > -margin:
        reason = f"{primary} not worse by {margin}, no metric worse"
        return GateResult(PROMOTE, reason, primary, config.alpha, results)
    return GateResult(
        WAIT, f"{primary} not yet significantly better", primary, config.alpha, results
    )


def _sides(tally: Tally, metric: str) -> tuple[float | None, float | None]:
    values = []
    for side in (tally.champion[metric], tally.challenger[metric]):
        mean = side.mean if side.n else None
        values.append(math.exp(mean) if metric == LATENCY and mean is not None else mean)
    return values[0], values[1]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# -- the archive ------------------------------------------------------------------------

_PAIRS = """
WITH r AS (
    SELECT request_id, created_ms, deadline_ms FROM requests
    WHERE endpoint = $endpoint AND replay IS NULL
      AND ($since IS NULL OR created_ms >= $since)
      AND ($until IS NULL OR created_ms < $until)
),
a AS (SELECT request_id, status, finished_ms FROM scores WHERE model = $a),
b AS (SELECT request_id, status, finished_ms FROM scores WHERE model = $b)
SELECT r.deadline_ms - r.created_ms, a.status, a.finished_ms - r.created_ms,
       b.status, b.finished_ms - r.created_ms
FROM r JOIN a USING (request_id) JOIN b USING (request_id)
ORDER BY r.created_ms, r.request_id
"""
_REWARDS = """
WITH r AS (
    SELECT request_id, created_ms, attributes FROM requests
    WHERE endpoint = $endpoint AND replay IS NULL
      AND ($since IS NULL OR created_ms >= $since)
      AND ($until IS NULL OR created_ms < $until)
),
f AS (
    SELECT request_id, arg_max(reward, received_ms) AS reward FROM feedback GROUP BY request_id
)
SELECT r.request_id, r.attributes, f.reward
FROM r JOIN decisions d USING (request_id) JOIN f USING (request_id)
WHERE d.policy_version = $version
ORDER BY r.created_ms, r.request_id
"""
_BANDIT_REWARDS = """
WITH r AS (
    SELECT request_id, created_ms FROM requests
    WHERE endpoint = $endpoint AND replay IS NULL
      AND ($since IS NULL OR created_ms >= $since)
      AND ($until IS NULL OR created_ms < $until)
),
f AS (
    SELECT request_id, arg_max(reward, received_ms) AS reward FROM feedback GROUP BY request_id
)
SELECT d.chosen_model, d.propensity, f.reward
FROM r JOIN decisions d USING (request_id) JOIN f USING (request_id)
WHERE d.policy_version = $version AND d.reason = 'bandit'
ORDER BY r.created_ms, r.request_id
"""


@dataclass(frozen=True, slots=True)
class Window:
    """The requests the gate reads: one endpoint, [since, until) in epoch ms."""

    endpoint: str
    champion: str
    challenger: str
    since_ms: int | None = None
    until_ms: int | None = None


def tally_archive(
    con: duckdb.DuckDBPyConnection, window: Window, policy: Policy | None = None
) -> Tally:
    """The window's paired requests (and, when the challenger is ``policy``'s canary,
    the rewards decided under its version) tallied in creation order."""
    if window.champion == window.challenger:
        raise ValueError("champion and challenger must be two different models")
    tally = Tally()
    params: dict[str, Any] = {
        "endpoint": window.endpoint,
        "since": window.since_ms,
        "until": window.until_ms,
    }
    rows = con.execute(_PAIRS, {**params, "a": window.champion, "b": window.challenger})
    while batch := rows.fetchmany(100_000):
        for deadline, a_status, a_lat, b_status, b_lat in batch:
            tally.add_pair(float(deadline), (a_status, a_lat), (b_status, b_lat))
    canary = policy.canary if policy is not None else None
    if policy is not None and canary is not None and canary.model == window.challenger:
        for rid, attributes, reward in con.execute(
            _REWARDS, {**params, "version": policy.version}
        ).fetchall():
            attrs = {str(k): str(v) for k, v in (attributes or {}).items()}
            branch = in_canary(RequestSnapshot(rid, 0.0, 0.0, attributes=attrs), policy)
            tally.add_reward(float(reward), branch, canary.share)
    elif policy is not None and _both_arms(policy, window):
        query = con.execute(_BANDIT_REWARDS, {**params, "version": policy.version})
        for chosen, propensity, reward in query.fetchall():
            side = 1 if chosen == window.challenger else -1 if chosen == window.champion else 0
            tally.add_bandit_reward(float(reward), side, float(propensity))
    return tally


def _both_arms(policy: Policy, window: Window) -> bool:
    """Whether the champion and the challenger are both arms of the bandit stage."""
    index = policy.bandit_stage()
    arms = () if index is None else policy.stages[index].accept
    return window.champion in arms and window.challenger in arms

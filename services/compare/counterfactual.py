"""How often each model would be chosen under a policy (in ``rdv compare``, the policy
files' policy), replayed on archived paired requests with the rendezvous's own decision
function (``services.common.decide``).

For each sampled request, a ``RequestSnapshot`` holds the two models' scores at the
latencies they had (score finished minus request created), and ``decide`` runs at every
moment its verdict can change (each arrival, each stage boundary, the deadline) as the
service runs it. Only these two models' scores are in it: other roster models count as
silent, and an OOD gate's detector as slow (its wait passes, unknown). The sample is
the ``sample`` requests with the smallest hash of their id: stable across runs.
"""

from __future__ import annotations

from typing import Any

import duckdb

from services.common.arrivals import Arrived, RequestSnapshot
from services.common.decide import decide, next_check
from services.common.messages import MODEL_ERROR, ErrorBody, Role, ScoreStatus
from services.common.policy import Policy
from services.compare.intervals import Interval, wilson
from services.compare.paired import Window, build_pairs, holds_pairs

_SAMPLE = """
SELECT request_id, deadline_ms - created_ms, a_status, a_done - created_ms,
       b_status, b_done - created_ms
FROM compare_pairs ORDER BY hash(request_id) LIMIT $sample
"""
_ARCHIVED_ERROR = ErrorBody(code=MODEL_ERROR, message="archived error")


def would_choose(
    con: duckdb.DuckDBPyConnection, window: Window, policy: Policy, sample: int = 5000
) -> dict[str, Interval]:
    """Per model (and ``"default"`` for the default answer): the share of sampled paired
    requests the policy would have answered with it, with a Wilson interval. The paired
    requests are those paired_figures read when it ran on ``con`` first (build_pairs)."""
    if not holds_pairs(con, window):
        build_pairs(con, window)
    rows = con.execute(_SAMPLE, {"sample": sample}).fetchall()
    counts: dict[str, int] = {window.champion: 0, window.challenger: 0, "default": 0}
    for rid, deadline, a_status, a_lat, b_status, b_lat in rows:
        sides = ((window.champion, a_status, a_lat), (window.challenger, b_status, b_lat))
        chosen = replay_decision(policy, rid, float(deadline), sides)
        counts[chosen or "default"] = counts.get(chosen or "default", 0) + 1
    return {model: wilson(k, len(rows)) for model, k in counts.items()}


def replay_decision(policy: Policy, request_id: str, deadline_ms: float, sides: Any) -> str | None:
    """The model ``policy`` picks for one request given ``(model, status, latency_ms)``
    sides; None for the default answer."""
    scores: dict[str, Arrived] = {}
    for model, status, latency in sides:
        scores.setdefault(model, _arrived(status, max(float(latency), 0.0)))
    box = RequestSnapshot(request_id, 0.0, max(deadline_ms, 0.0), scores)
    arrivals = [score.at_ms for score in scores.values()]
    now = 0.0
    while True:
        verdict = decide(box, policy, now)
        if verdict is not None:
            return verdict.chosen_model
        later = [t for t in arrivals if t > now]
        now = min([*later, next_check(box, policy, now)])


def _arrived(status: str, at_ms: float) -> Arrived:
    state = ScoreStatus(status)
    return Arrived(
        status=state,
        at_ms=at_ms,
        output="archived" if state is ScoreStatus.OK else None,
        role=Role.CHALLENGER,
        error=_ARCHIVED_ERROR if state is ScoreStatus.ERROR else None,
    )

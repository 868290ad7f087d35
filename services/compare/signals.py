"""The signals watched for drift, read from the archive's scores: each canary model's
output (its ``coverage``, or a plain number) and each detector's ``ood_score``, per
time window (the score's ``finished_ms``, epoch ms, [since, until))."""

from __future__ import annotations

import duckdb

from services.compare.drift import Drift, drift

_FIELDS = {"canary": "coverage", "detector": "ood_score"}

_MODELS = """
SELECT DISTINCT role, model FROM scores
WHERE role IN ('canary', 'detector') AND status = 'ok'
  AND ($endpoint IS NULL OR endpoint = $endpoint)
  AND finished_ms >= $since AND finished_ms < $until
ORDER BY role, model
"""

_VALUES = """
SELECT TRY_CAST(coalesce(json_extract(output, '$.' || $field), output) AS DOUBLE) AS value
FROM scores
WHERE model = $model AND status = 'ok'
  AND ($endpoint IS NULL OR endpoint = $endpoint)
  AND finished_ms >= $since AND finished_ms < $until
"""

Span = tuple[float, float]


def values(
    con: duckdb.DuckDBPyConnection,
    model: str,
    role: str,
    span: Span,
    endpoint: str | None = None,
) -> list[float]:
    """The numeric outputs of one canary or detector model in ``span``."""
    params = {
        "model": model,
        "field": _FIELDS[role],
        "endpoint": endpoint,
        "since": span[0],
        "until": span[1],
    }
    return [v for (v,) in con.execute(_VALUES, params).fetchall() if v is not None]


def drift_signals(
    con: duckdb.DuckDBPyConnection,
    current: Span,
    reference: Span,
    endpoint: str | None = None,
    min_samples: int = 20,
) -> dict[str, Drift]:
    """``"<role>:<model>"`` -> drift of the current window against the reference, for
    every canary and detector with at least ``min_samples`` outputs in both."""
    spans = {"endpoint": endpoint, "since": min(current[0], reference[0])}
    spans["until"] = max(current[1], reference[1])
    out: dict[str, Drift] = {}
    for role, model in con.execute(_MODELS, spans).fetchall():
        ref = values(con, model, role, reference, endpoint)
        cur = values(con, model, role, current, endpoint)
        if len(ref) >= min_samples and len(cur) >= min_samples:
            out[f"{role}:{model}"] = drift(ref, cur)
    return out

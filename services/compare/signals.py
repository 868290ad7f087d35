"""The signals watched for drift, read from the archive's scores: each canary model's
output (its ``coverage``, or a plain number) and each detector's ``ood_score``, per
time window (the score's ``finished_ms``, epoch ms, [since, until)).

One query reads every signal of both windows. ``rdv compare`` reads the deduplicated
``scores`` view; the compare service's periodic drift check reads ``scores_raw``, which skips
the Parquet row groups outside the windows instead of deduplicating the whole archive
every minute (a rare redelivered score barely moves a distribution).
"""

from __future__ import annotations

from typing import Literal

import duckdb

from services.compare.drift import Drift, drift

Source = Literal["scores", "scores_raw"]

_SIGNALS = """
SELECT role, model, finished_ms,
       TRY_CAST(coalesce(
           json_extract(output, CASE role WHEN 'canary' THEN '$.coverage' ELSE '$.ood_score' END),
           output
       ) AS DOUBLE)
FROM {source}
WHERE role IN ('canary', 'detector') AND status = 'ok'
  AND ($endpoint IS NULL OR endpoint = $endpoint)
  AND finished_ms >= $since AND finished_ms < $until
"""

Span = tuple[float, float]


def drift_signals(
    con: duckdb.DuckDBPyConnection,
    current: Span,
    reference: Span,
    endpoint: str | None = None,
    *,
    min_samples: int = 20,
    source: Source = "scores",
) -> dict[str, Drift]:
    """``"<role>:<model>"`` -> drift of the current window against the reference, for
    every canary and detector with at least ``min_samples`` outputs in both."""
    params = {
        "endpoint": endpoint,
        "since": min(current[0], reference[0]),
        "until": max(current[1], reference[1]),
    }
    sql = _SIGNALS.format(source=source)  # one of two view names, never user text
    windows: dict[str, tuple[list[float], list[float]]] = {}
    for role, model, at, value in con.execute(sql, params).fetchall():
        if value is None:
            continue
        ref, cur = windows.setdefault(f"{role}:{model}", ([], []))
        if reference[0] <= at < reference[1]:
            ref.append(value)
        if current[0] <= at < current[1]:
            cur.append(value)
    return {
        signal: drift(ref, cur)
        for signal, (ref, cur) in sorted(windows.items())
        if len(ref) >= min_samples and len(cur) >= min_samples
    }

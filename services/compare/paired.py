"""Paired figures of two models on identical inputs, computed in DuckDB over the archive's
deduplicated views ``requests``, ``scores`` and ``decisions`` (services.archive.query).

A request is *paired* when both models scored it (any status). Per model, over the
paired requests:

- latency: the score's ``finished_ms`` minus the request's ``created_ms`` (what a client
  would have waited had this model answered), for ok scores, into a latency sketch;
- within deadline: ok and finished by the request's deadline;
- error and skip counts; mean output length (characters of the chat text, else of
  the JSON output);
- chosen: how often the rendezvous actually returned it (decisions).

Between the two: exact agreement of the answer texts and their mean Jaro-Winkler
similarity (where both are ok), how often the challenger was faster, and the share of
the paired requests the OOD gate flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from services.compare.sketch import LatencySketch


@dataclass(frozen=True, slots=True)
class Window:
    """Which requests to compare: by endpoint and creation time (epoch ms, [since, until))."""

    champion: str
    challenger: str
    endpoint: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def __post_init__(self) -> None:
        if self.champion == self.challenger:
            raise ValueError("champion and challenger must be two different models")


@dataclass
class ModelFigures:
    """One model over the paired requests."""

    model: str
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    within_deadline: int = 0
    chosen: int = 0
    mean_output_chars: float | None = None
    latency: LatencySketch = field(default_factory=LatencySketch)


@dataclass
class Paired:
    """The comparison's raw figures (report.py turns them into intervals and a verdict)."""

    window: Window
    paired: int  # requests both models scored
    only_champion: int  # requests only the champion scored
    only_challenger: int
    champion: ModelFigures
    challenger: ModelFigures
    both_ok: int
    exact_agreement: int
    mean_similarity: float | None
    challenger_faster: int  # among both ok
    ood_checked: int  # paired requests whose decision carries an OOD finding
    ood_flagged: int


_PAIRS = """
WITH r AS (
    SELECT request_id, created_ms, deadline_ms FROM requests
    WHERE ($endpoint IS NULL OR endpoint = $endpoint)
      AND ($since IS NULL OR created_ms >= $since)
      AND ($until IS NULL OR created_ms < $until)
),
s AS (
    SELECT request_id, model, status, finished_ms,
           coalesce(json_extract_string(output, '$.text'), output) AS text
    FROM scores WHERE model = $a OR model = $b
),
a AS (SELECT * FROM s WHERE model = $a),
b AS (SELECT * FROM s WHERE model = $b)
"""

# The queries are composed from these constants only; values go in as parameters.
PAIRED_SQL = (
    _PAIRS  # noqa: S608
    + """,
p AS (
    SELECT r.request_id, r.deadline_ms, r.created_ms,
           a.status AS a_status, a.text AS a_text, a.finished_ms AS a_done,
           b.status AS b_status, b.text AS b_text, b.finished_ms AS b_done
    FROM r JOIN a USING (request_id) JOIN b USING (request_id)
)
"""
)

_FIGURES = (
    PAIRED_SQL
    + """
SELECT
    count(*),
    count_if(a_status = 'ok'), count_if(a_status = 'error'), count_if(a_status = 'skipped'),
    count_if(a_status = 'ok' AND a_done <= deadline_ms),
    avg(length(a_text)) FILTER (WHERE a_status = 'ok'),
    count_if(b_status = 'ok'), count_if(b_status = 'error'), count_if(b_status = 'skipped'),
    count_if(b_status = 'ok' AND b_done <= deadline_ms),
    avg(length(b_text)) FILTER (WHERE b_status = 'ok'),
    count_if(a_status = 'ok' AND b_status = 'ok'),
    count_if(a_status = 'ok' AND b_status = 'ok' AND a_text = b_text),
    avg(jaro_winkler_similarity(a_text, b_text)) FILTER (WHERE a_status = 'ok' AND b_status = 'ok'),
    count_if(a_status = 'ok' AND b_status = 'ok' AND b_done < a_done)
FROM p
"""
)

_UNPAIRED = (
    _PAIRS  # noqa: S608
    + """
SELECT
    (SELECT count(*) FROM r JOIN a USING (request_id) ANTI JOIN b USING (request_id)),
    (SELECT count(*) FROM r JOIN b USING (request_id) ANTI JOIN a USING (request_id))
"""
)

_DECISIONS = (
    PAIRED_SQL
    + """
SELECT count_if(d.chosen_model = $a), count_if(d.chosen_model = $b),
       count_if(d.ood_status IS NOT NULL), count_if(d.ood_status = 'flagged')
FROM p JOIN decisions d USING (request_id)
"""
)

_LATENCIES = (
    PAIRED_SQL
    + """
SELECT a_done - created_ms AS a_lat, b_done - created_ms AS b_lat, a_status, b_status FROM p
WHERE a_status = 'ok' OR b_status = 'ok'
"""
)


def query_params(window: Window) -> dict[str, Any]:
    return {
        "a": window.champion,
        "b": window.challenger,
        "endpoint": window.endpoint,
        "since": window.since_ms,
        "until": window.until_ms,
    }


def _counts(row: tuple[Any, ...] | None, averages: tuple[int, ...] = ()) -> list[Any]:
    """An aggregate row with SQL nulls of empty counts as 0 (averages stay None)."""
    assert row is not None  # an aggregate query always returns one row
    return [v if v is not None or i in averages else 0 for i, v in enumerate(row)]


def paired_figures(con: duckdb.DuckDBPyConnection, window: Window) -> Paired:
    """The raw paired figures of ``window`` from the archive views on ``con``."""
    params = query_params(window)
    row = _counts(con.execute(_FIGURES, params).fetchone(), averages=(5, 10, 13))
    unpaired = _counts(con.execute(_UNPAIRED, params).fetchone())
    decided = _counts(con.execute(_DECISIONS, params).fetchone())
    champ = ModelFigures(window.champion, row[1], row[2], row[3], row[4], 0, row[5])
    chall = ModelFigures(window.challenger, row[6], row[7], row[8], row[9], 0, row[10])
    champ.chosen, chall.chosen = decided[0], decided[1]
    cursor = con.execute(_LATENCIES, params)
    while batch := cursor.fetchmany(100_000):
        for a_lat, b_lat, a_status, b_status in batch:
            if a_status == "ok":
                champ.latency.add(a_lat)
            if b_status == "ok":
                chall.latency.add(b_lat)
    return Paired(
        window=window,
        paired=row[0],
        only_champion=unpaired[0],
        only_challenger=unpaired[1],
        champion=champ,
        challenger=chall,
        both_ok=row[11],
        exact_agreement=row[12],
        mean_similarity=row[13],
        challenger_faster=row[14],
        ood_checked=decided[2],
        ood_flagged=decided[3],
    )

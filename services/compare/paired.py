"""Paired figures of two models on identical inputs, computed in DuckDB over the archive's
deduplicated views ``requests``, ``scores`` and ``decisions`` (services.common.archive_files).

A request is *paired* when both models scored it (any status but a sampled model's
``not_sampled`` skip: services.common.sampling). Per model, over the paired requests:

- latency: the score's ``finished_ms`` minus the request's ``created_ms`` (what a client
  would have waited had this model answered), for ok scores, into a latency sketch;
- within deadline: ok and finished by the request's deadline;
- error and skip counts; mean output length (characters of the chat text, else of
  the JSON output);
- chosen: how often the rendezvous actually returned it (decisions).

Between the two: exact agreement of the answer texts and their mean Jaro-Winkler
similarity (where both are ok), how often the challenger was faster, and the share of
the paired requests the OOD gate flagged.

A sampled model (spec ``sample`` < 1) scores a stable hash-chosen share of requests and
sends a ``not_sampled`` skip for the others: those requests are not paired, so every
paired figure is over the requests in its sample. The hash is independent of the
request, so they are a uniform sample and the figures estimate the full-shadow ones
(with intervals as wide as the sample is small). Per model, ``sample`` says which share
of the window's requests it saw were in its sample, and the share its workers were
configured with (named by its ``not_sampled`` scores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb

from services.common.sampling import ARCHIVED_PREFIX, SHARE_PATTERN
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
    sample: SampleFigures | None = None  # its scores of the window, in and out of its sample


@dataclass(frozen=True, slots=True)
class SampleFigures:
    """Which share of the window's requests a model scored (services.common.sampling)."""

    in_sample: int  # scores of the window but its not_sampled skips
    seen: int  # every score of the window, not_sampled skips included
    configured: tuple[float, ...]  # the shares its not_sampled skips named (several: changed)

    @property
    def configured_share(self) -> float | None:
        """The configured share: 1 when nothing was left out, None when it changed."""
        if not self.configured:
            return 1.0 if self.seen else None
        return self.configured[0] if len(self.configured) == 1 else None


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
           coalesce(json_extract_string(output, '$.text'), output) AS text,
           coalesce(status = 'skipped' AND starts_with(error, $not_sampled), false) AS left_out,
           CASE WHEN left_out THEN try_cast(regexp_extract(error, $share, 1) AS DOUBLE) END
               AS share
    FROM scores WHERE model = $a OR model = $b
),
a AS (SELECT * FROM s WHERE model = $a),
b AS (SELECT * FROM s WHERE model = $b)
"""

# The queries are composed from these constants only; values go in as parameters.
# build_pairs reads the two models' scores of the window once, into temporary tables on
# the connection; every figure, and the counterfactual sample, is computed from those.
_SCORED = (
    _PAIRS
    + """
SELECT r.request_id, r.created_ms, r.deadline_ms, s.model, s.status, s.finished_ms, s.text,
       s.left_out, s.share
FROM r JOIN s USING (request_id)
"""
)

_PAIRED_ROWS = """
SELECT a.request_id, a.deadline_ms, a.created_ms,
       a.status AS a_status, a.text AS a_text, a.finished_ms AS a_done,
       b.status AS b_status, b.text AS b_text, b.finished_ms AS b_done
FROM compare_scored a JOIN compare_scored b USING (request_id)
WHERE a.model = $a AND b.model = $b AND NOT a.left_out AND NOT b.left_out
"""

_FIGURES = """
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
FROM compare_pairs
"""

_SCORED_BY = """
SELECT count_if(model = $a AND NOT left_out), count_if(model = $b AND NOT left_out)
FROM compare_scored
"""

_SAMPLES = """
SELECT model, count_if(NOT left_out), count(*),
       coalesce(list(DISTINCT share ORDER BY share) FILTER (WHERE share IS NOT NULL), [])
FROM compare_scored GROUP BY model
"""

SAMPLE_PARAMS = {"not_sampled": ARCHIVED_PREFIX, "share": SHARE_PATTERN}
"""What the queries need to tell a not_sampled skip (and its share) from other scores."""

_DECISIONS = """
SELECT count_if(d.chosen_model = $a), count_if(d.chosen_model = $b),
       count_if(d.ood_status IS NOT NULL), count_if(d.ood_status = 'flagged')
FROM compare_pairs p JOIN decisions d USING (request_id)
"""

_STAMPED = """
SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = 'compare_pairs_of'
"""

_LATENCIES = """
SELECT a_done - created_ms AS a_lat, b_done - created_ms AS b_lat, a_status, b_status
FROM compare_pairs WHERE a_status = 'ok' OR b_status = 'ok'
"""


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


def build_pairs(con: duckdb.DuckDBPyConnection, window: Window) -> None:
    """The window's scores of the two models into the temporary table ``compare_scored``,
    and its paired requests into ``compare_pairs`` (one row per request: both sides'
    status, text and finish time), read from the archive's views now. The tables stay
    for the life of the connection, stamped with the window, so that the counterfactual
    sample reads the pairs the figures were computed from rather than the views again."""
    params = query_params(window) | SAMPLE_PARAMS
    models = {"a": window.champion, "b": window.challenger}
    con.execute("DROP TABLE IF EXISTS compare_pairs_of")  # no stamp while half rebuilt
    con.execute("CREATE OR REPLACE TEMP TABLE compare_scored AS " + _SCORED, params)
    con.execute("CREATE OR REPLACE TEMP TABLE compare_pairs AS " + _PAIRED_ROWS, models)
    con.execute("CREATE TEMP TABLE compare_pairs_of AS SELECT $stamp AS stamp", _stamp(window))


def holds_pairs(con: duckdb.DuckDBPyConnection, window: Window) -> bool:
    """Whether ``compare_pairs`` on ``con`` holds ``window``'s pairs (build_pairs ran)."""
    if not _counts(con.execute(_STAMPED).fetchone())[0]:
        return False
    row = con.execute("SELECT stamp FROM compare_pairs_of").fetchone()
    return row is not None and row[0] == _stamp(window)["stamp"]


def _stamp(window: Window) -> dict[str, str]:
    return {"stamp": json.dumps(query_params(window), sort_keys=True)}


def paired_figures(con: duckdb.DuckDBPyConnection, window: Window) -> Paired:
    """The raw paired figures of ``window`` from the archive views on ``con`` (its pairs
    stay on ``con``: build_pairs)."""
    models = {"a": window.champion, "b": window.challenger}
    build_pairs(con, window)
    row = _counts(con.execute(_FIGURES).fetchone(), averages=(5, 10, 13))
    scored = _counts(con.execute(_SCORED_BY, models).fetchone())
    decided = _counts(con.execute(_DECISIONS, models).fetchone())
    champ, chall = _model_figures(window, row, decided)
    samples = {m: SampleFigures(k, n, tuple(c)) for m, k, n, c in con.execute(_SAMPLES).fetchall()}
    champ.sample, chall.sample = samples.get(champ.model), samples.get(chall.model)
    _sketch(con, champ, chall)
    return Paired(
        window=window,
        paired=row[0],
        only_champion=scored[0] - row[0],
        only_challenger=scored[1] - row[0],
        champion=champ,
        challenger=chall,
        both_ok=row[11],
        exact_agreement=row[12],
        mean_similarity=row[13],
        challenger_faster=row[14],
        ood_checked=decided[2],
        ood_flagged=decided[3],
    )


def _model_figures(
    window: Window, row: list[Any], decided: list[Any]
) -> tuple[ModelFigures, ModelFigures]:
    champ = ModelFigures(window.champion, row[1], row[2], row[3], row[4], decided[0], row[5])
    chall = ModelFigures(window.challenger, row[6], row[7], row[8], row[9], decided[1], row[10])
    return champ, chall


def _sketch(con: duckdb.DuckDBPyConnection, champ: ModelFigures, chall: ModelFigures) -> None:
    """Each model's ok latencies into its sketch, streamed in batches."""
    cursor = con.execute(_LATENCIES)
    while batch := cursor.fetchmany(100_000):
        for a_lat, b_lat, a_status, b_status in batch:
            if a_status == "ok":
                champ.latency.add(a_lat)
            if b_status == "ok":
                chall.latency.add(b_lat)

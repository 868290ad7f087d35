"""The decision log with feedback, restricted to the requests in both compared models'
samples: what the off-policy estimates read when a model is sampled.

A sampled model (spec ``sample`` < 1, services.common.sampling) could answer only the
requests in its sample: outside it, the rendezvous answered as if the model were not
there, so a logged propensity says nothing of how likely that model was to answer. The
estimates of "always answer with m" would then be biased, for the sampled model and
for the other one alike. Within the sample the logging policy is the full-shadow one,
and the hash makes the sample independent of the request, so restricting the log to
the requests neither model left out (a ``not_sampled`` skip) keeps the estimates
unbiased, at the cost of a smaller log (intervals about 1/sqrt(sample) as wide). With
no sampled model, this is the whole log (services.compare.rewards).
"""

from __future__ import annotations

import duckdb

from services.compare.offpolicy import Logged
from services.compare.paired import SAMPLE_PARAMS, Window, query_params

_LOG = """
WITH r AS (
    SELECT request_id FROM requests
    WHERE ($endpoint IS NULL OR endpoint = $endpoint)
      AND ($since IS NULL OR created_ms >= $since)
      AND ($until IS NULL OR created_ms < $until)
),
left_out AS (
    SELECT DISTINCT request_id FROM scores
    WHERE (model = $a OR model = $b) AND status = 'skipped' AND starts_with(error, $not_sampled)
),
f AS (
    SELECT request_id, arg_max(reward, received_ms) AS reward FROM feedback GROUP BY request_id
)
SELECT d.chosen_model, d.propensity, f.reward
FROM r JOIN decisions d USING (request_id) JOIN f USING (request_id)
WHERE request_id NOT IN (SELECT request_id FROM left_out)
"""


def sampled_rewards(con: duckdb.DuckDBPyConnection, window: Window) -> list[Logged]:
    """The logged (chosen, propensity, reward) rows of the window's requests that both
    models' samples hold; [] without feedback."""
    params = query_params(window) | {"not_sampled": SAMPLE_PARAMS["not_sampled"]}
    rows = con.execute(_LOG, params).fetchall()
    return [Logged(chosen, float(p), float(reward)) for chosen, p, reward in rows]

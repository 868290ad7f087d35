"""The decision log joined with client feedback: what off-policy estimates read.

One row per decided request in the window that got feedback (the latest feedback per
request counts): the model that answered (None for the default answer), the
propensity the rendezvous recorded, and the reward.
"""

from __future__ import annotations

import duckdb

from services.compare.offpolicy import Logged
from services.compare.paired import Window, query_params

_LOG = """
WITH r AS (
    SELECT request_id FROM requests
    WHERE ($endpoint IS NULL OR endpoint = $endpoint)
      AND ($since IS NULL OR created_ms >= $since)
      AND ($until IS NULL OR created_ms < $until)
),
f AS (
    SELECT request_id, arg_max(reward, received_ms) AS reward FROM feedback GROUP BY request_id
)
SELECT d.chosen_model, d.propensity, f.reward
FROM r JOIN decisions d USING (request_id) JOIN f USING (request_id)
"""


def logged_rewards(con: duckdb.DuckDBPyConnection, window: Window) -> list[Logged]:
    """The logged (chosen, propensity, reward) rows of the window; [] without feedback
    (the archive's ``feedback`` view always exists, empty until feedback is archived)."""
    params = {k: v for k, v in query_params(window).items() if k in ("endpoint", "since", "until")}
    rows = con.execute(_LOG, params).fetchall()
    return [Logged(chosen, float(p), float(reward)) for chosen, p, reward in rows]

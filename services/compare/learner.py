"""The learner: folds the archive's decisions and feedback into each endpoint's rewards per
context bucket and model, and publishes them as ``learned/<endpoint>`` control entries,
the state every rendezvous replica's bandit stage draws from (services.common.bandit).

The archive is the source of truth, so the state is rebuilt from it after any restart
and every replica reads the same compacted entry (identical draws for the same request).
A reward counts for the model that answered (``chosen_model``), in the bucket the
decision recorded (``*`` for decisions without one); the latest feedback per request
counts, as in rdv compare. An entry is written only when the folded feedback changed.
One learner per cluster: it numbers its entries from the highest version it finds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import duckdb

from services.common.archive_files import FEEDBACK, connect
from services.common.bandit import ALL
from services.common.clock import wall_ms
from services.common.messages import ArmRewards, LearnedEntry
from services.compare import metrics
from services.compare.periodic import Periodic

Publish = Callable[[list[LearnedEntry]], None]

_FOLD = """
WITH f AS (
    SELECT request_id, arg_max(reward, received_ms) AS reward FROM feedback GROUP BY request_id
)
SELECT d.endpoint, coalesce({bucket}, $all) AS bucket, d.chosen_model,
       count(*) AS n, sum(f.reward) AS total, sum(f.reward * f.reward) AS squares
FROM decisions d JOIN f USING (request_id)
WHERE d.chosen_model IS NOT NULL
GROUP BY ALL
"""

Folded = dict[str, dict[str, dict[str, ArmRewards]]]
"""Endpoint -> bucket -> model -> rewards."""


def fold(con: duckdb.DuckDBPyConnection) -> tuple[Folded, dict[str, int]]:
    """Rewards per endpoint, bucket and model, and the feedback count per endpoint."""
    columns = {row[0] for row in con.execute("DESCRIBE decisions").fetchall()}
    bucket = "d.bucket" if "bucket" in columns else "NULL"  # archives from before bandits
    query = _FOLD.format(bucket=bucket)
    out: Folded = {}
    counts: dict[str, int] = {}
    for endpoint, key, model, n, total, squares in con.execute(query, {"all": ALL}).fetchall():
        arms = out.setdefault(endpoint, {}).setdefault(key, {})
        arms[model] = ArmRewards(n=float(n), total=float(total), squares=float(squares))
        counts[endpoint] = counts.get(endpoint, 0) + int(n)
    return out, counts


def feedback_files(root: Path) -> frozenset[tuple[str, int]]:
    """The archive's feedback files and their sizes: a new fold is due when they change."""
    found = Path(root).glob(str(Path(FEEDBACK, "date=*", "hour=*", "*.parquet")))
    return frozenset((str(p), p.stat().st_size) for p in found)


class Learner:
    """Every ``interval_s``: fold the archive, publish the endpoints whose feedback grew."""

    def __init__(
        self,
        root: Path,
        publish: Publish,
        *,
        interval_s: float,
        versions: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self.root = root
        self.interval_s = interval_s
        self._publish = publish
        self._read_versions = versions  # the versions already written, read before the first
        self._versions: dict[str, int] | None = None  # endpoint -> last version written
        self._counts: dict[str, int] = {}  # endpoint -> feedback folded in that version
        self._files: frozenset[tuple[str, int]] | None = None  # feedback files last folded
        self._periodic = Periodic(
            "compare-learner",
            interval_s,
            self.step,
            lambda ok: None if ok else metrics.LEARN_FAILURES.inc(),
            "learning step",
        )

    def step(self) -> list[LearnedEntry]:
        """One fold; returns (and publishes) the entries that changed."""
        if not self.root.is_dir():
            return []
        files = feedback_files(self.root)
        if files == self._files:
            return []  # no feedback written since the last fold
        con = connect(self.root)
        try:
            folded, counts = fold(con)
        finally:
            con.close()
        if self._versions is None:
            self._versions = dict(self._read_versions())
        now = int(wall_ms())
        entries = []
        for endpoint, buckets in sorted(folded.items()):
            if counts[endpoint] == self._counts.get(endpoint):
                continue
            version = self._versions.get(endpoint, 0) + 1
            entries.append(
                LearnedEntry(
                    endpoint=endpoint,
                    version=version,
                    buckets=buckets,
                    feedback=counts[endpoint],
                    learned_ms=now,
                )
            )
        if entries:
            self._publish(entries)  # raises when the broker did not take them: retried
            for entry in entries:
                self._versions[entry.endpoint] = entry.version
                self._counts[entry.endpoint] = entry.feedback
            metrics.LEARNED.inc(len(entries))
        self._files = files
        return entries

    def start(self) -> Learner:
        self._periodic.start()
        return self

    def alive(self) -> bool:
        return self._periodic.alive()

    def stop(self) -> None:
        self._periodic.stop()

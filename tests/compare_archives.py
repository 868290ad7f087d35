"""Archive folders written by the archive's own store (Parquet, duplicates included),
with known figures, for the compare tests (``rdv compare``, the compare service)."""

from __future__ import annotations

import random
from pathlib import Path

from services.archive.schema import ROW_BUILDERS, to_table
from services.archive.store import PartStore, hour_of
from services.common.archive_files import DECISIONS, REQUESTS, SCORES
from services.common.kafka import Record
from services.common.messages import Decision, Score, ScoreStatus, Timings
from tests.factories import request


def write_pairs(root: Path, n: int = 400) -> None:
    """champ answers in 100..199 ms; chall in 20..59 ms but errors on every 10th request;
    every score of the first 50 requests is written twice (a redelivery)."""
    rows: dict[str, list[tuple[object, ...]]] = {REQUESTS: [], SCORES: [], DECISIONS: []}
    offset = 0

    def add(kind: str, msg: object, created: int) -> None:
        nonlocal offset
        offset += 1
        rec = Record(f"rdv.{kind}", 0, offset, b"k", b"v", timestamp_ms=created)
        rows[kind].append(ROW_BUILDERS[kind](msg, rec, created + 500))

    for i in range(n):
        req = request(request_id=f"r{i}", endpoint="demo", deadline_in_ms=1000)
        created = req.created_ms
        add(REQUESTS, req, created)
        for model, latency, failed in (
            ("champ", 100 + i % 100, False),
            ("chall", 20 + i % 40, i % 10 == 0),
        ):
            done = created + latency
            score = Score(
                request_id=req.request_id,
                endpoint="demo",
                model=model,
                model_version="1",
                role="champion" if model == "champ" else "challenger",
                status=ScoreStatus.ERROR if failed else ScoreStatus.OK,
                output=None if failed else {"text": "same answer"},
                error="boom" if failed else None,
                timings=Timings(received_ms=created, started_ms=created, finished_ms=done),
            )
            for _ in range(2 if i < 50 else 1):
                add(SCORES, score, created)
        decision = Decision(
            request_id=req.request_id,
            endpoint="demo",
            chosen_model="champ",
            reason="champion_in_time",
            in_time=["champ", "chall"],
            late=[],
            latencies_ms={},
            elapsed_ms=120.0,
            decided_ms=created + 120.0,
        )
        add(DECISIONS, decision, created)
    store = PartStore(root)
    for kind, kind_rows in rows.items():
        created = int(kind_rows[0][-2])  # record_ms of the first row
        store.write(kind, hour_of(created), to_table(kind, kind_rows))


def write_signals(root: Path, base: int) -> None:
    """A detector and a canary scoring 200 requests an hour before ``base`` and 200 in
    the hour after: the second hour's traffic is out of scope (higher OOD scores, lower
    coverage)."""
    rng = random.Random(2)
    rows: list[tuple[object, ...]] = []
    for i in range(400):
        shifted = i >= 200
        done = base + (i - 200) * 10_000 + 5
        for model, role, output in (
            ("ood", "detector", {"ood_score": rng.gauss(3.0 if shifted else 0.0, 1.0)}),
            ("canary", "canary", {"coverage": rng.uniform(0.5, 0.8) if shifted else 0.95}),
        ):
            score = Score(
                request_id=f"r{i}",
                endpoint="chat",
                model=model,
                model_version="1",
                role=role,
                status=ScoreStatus.OK,
                output=output,
                timings=Timings(received_ms=done - 5, started_ms=done - 5, finished_ms=done),
            )
            rec = Record("rdv.scores", 0, len(rows), b"k", b"v", timestamp_ms=int(done))
            rows.append(ROW_BUILDERS[SCORES](score, rec, int(done)))
    PartStore(root).write(SCORES, hour_of(base), to_table(SCORES, rows))

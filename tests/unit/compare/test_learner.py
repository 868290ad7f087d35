"""The learner folds archived decisions and feedback into per-bucket arm rewards and
publishes an entry only when the feedback changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.common.archive_files import DECISIONS, FEEDBACK, SCHEMAS
from services.common.bandit import ALL
from services.common.messages import LearnedEntry
from services.compare.learner import Learner

T0 = 1_767_225_600_000


def _write(root: Path, kind: str, rows: list[dict[str, Any]], part: int) -> None:
    schema = SCHEMAS[kind]
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    folder = root / kind / "date=2026-01-01" / "hour=0"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), folder / f"part-{part}.parquet")


def _decision(
    rid: str, model: str | None, bucket: str | None, endpoint: str = "demo"
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "endpoint": endpoint,
        "chosen_model": model,
        "reason": "bandit",
        "propensity": 0.5,
        "bucket": bucket,
        "arm": model,
        "v": 1,
        "topic": "decisions",
        "partition": 0,
        "offset": int(rid.removeprefix("r")),
        "record_ms": T0,
        "archived_ms": T0,
    }


def _feedback(rid: str, reward: float, at: float) -> dict[str, Any]:
    return {
        "request_id": rid,
        "reward": reward,
        "received_ms": T0 + at,
        "v": 1,
        "topic": "feedback",
        "partition": 0,
        "offset": 0,
        "record_ms": T0,
        "archived_ms": T0,
    }


def test_fold_and_publish_only_on_new_feedback(tmp_path: Path) -> None:
    decisions = [
        _decision("r1", "a", "free"),
        _decision("r2", "a", "free"),
        _decision("r3", "b", "pro"),
        _decision("r4", "b", None),  # no bucket recorded: the context-free bucket
        _decision("r5", None, "free"),  # the default answer: no model to credit
        _decision("r6", "c", "pro", endpoint="chat"),
        _decision("r7", "a", "free"),  # no feedback: not counted
    ]
    _write(tmp_path, DECISIONS, decisions, 0)
    _write(
        tmp_path,
        FEEDBACK,
        [
            _feedback("r1", 1.0, 1),
            _feedback("r1", 0.0, 2),  # the latest feedback per request counts
            _feedback("r2", 1.0, 1),
            _feedback("r3", 2.0, 1),
            _feedback("r4", 1.0, 1),
            _feedback("r5", 1.0, 1),
            _feedback("r6", 0.5, 1),
        ],
        0,
    )
    published: list[list[LearnedEntry]] = []
    learner = Learner(tmp_path, published.append, interval_s=1.0, versions=lambda: {"demo": 7})
    entries = {e.endpoint: e for e in learner.step()}
    demo = entries["demo"]
    assert demo.version == 8  # numbered after what was already written
    assert demo.feedback == 4
    free = demo.buckets["free"]["a"]
    assert (free.n, free.total, free.squares) == (2.0, 1.0, 1.0)
    pro = demo.buckets["pro"]["b"]
    assert (pro.n, pro.total, pro.squares) == (1.0, 2.0, 4.0)
    assert demo.buckets[ALL]["b"].n == 1.0
    assert entries["chat"].version == 1
    assert entries["chat"].buckets["pro"]["c"].total == 0.5

    assert learner.step() == []  # nothing new: nothing written
    _write(tmp_path, FEEDBACK, [_feedback("r7", 1.0, 5)], 1)
    again = learner.step()
    assert [(e.endpoint, e.version, e.feedback) for e in again] == [("demo", 9, 5)]
    assert len(published) == 2


def test_a_failed_publish_is_tried_again(tmp_path: Path) -> None:
    _write(tmp_path, DECISIONS, [_decision("r1", "a", None)], 0)
    _write(tmp_path, FEEDBACK, [_feedback("r1", 1.0, 1)], 0)
    calls: list[int] = []

    def flaky(entries: list[LearnedEntry]) -> None:
        calls.append(len(entries))
        if len(calls) == 1:
            raise RuntimeError("broker away")

    learner = Learner(tmp_path, flaky, interval_s=1.0)
    with pytest.raises(RuntimeError, match="broker away"):
        learner.step()
    assert [e.version for e in learner.step()] == [1]
    assert calls == [1, 1]


def test_no_archive_yet(tmp_path: Path) -> None:
    learner = Learner(tmp_path / "absent", lambda e: None, interval_s=1.0)
    assert learner.step() == []

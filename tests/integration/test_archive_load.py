"""The archive beside a stack under load while a model worker is killed midway: every
request is archived exactly once and every score and decision too, the counts matching
what the topics hold (the killed replica's uncommitted requests are scored twice on the
topic; the archive's views show each (request, model) once)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.common.archive_files import connect
from services.common.codec import decode
from services.common.messages import Decision, RequestEnvelope, Score
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from tests.integration.kafka_io import read_all_after
from tests.integration.stack import (
    Launch,
    launch_stack_fixture,  # noqa: F401 - the fixture
    wait_for,
)
from tests.integration.test_archive import archive_proc, archives, start  # noqa: F401
from tests.integration.test_stack import _load, answered, launch_replicated

LOAD = 200
KILL_AT = LOAD // 2


def _on_topics(kafka: KafkaSettings, topics: Topics) -> dict[str, int]:
    """Distinct requests, (request, model) scores and decided requests on the topics."""
    now = time.time() * 1000

    def read(topic: str) -> list[bytes | None]:
        return [r.value for r in read_all_after(kafka, topic, now)]

    scores = {(s.request_id, s.model) for s in (decode(v, Score) for v in read(topics.scores))}
    return {
        "requests": len({decode(v, RequestEnvelope).request_id for v in read(topics.requests)}),
        "scores": len(scores),
        "decisions": len({decode(v, Decision).request_id for v in read(topics.decisions)}),
        "doubles": 0,
    }


def _archived(root: Path) -> dict[str, int]:
    con = connect(root)
    try:
        out = {
            kind: con.execute(f"SELECT count(*) FROM {kind}").fetchall()[0][0]
            for kind in ("requests", "scores", "decisions")
        }
        doubles = con.execute(
            "SELECT count(*) FROM (SELECT request_id, model FROM scores GROUP BY ALL "
            "HAVING count(*) > 1)"
        ).fetchall()[0][0]
        out["doubles"] = doubles
        return out
    finally:
        con.close()


def test_a_worker_killed_under_load_leaves_an_exact_archive(
    launch_stack: Launch,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    archives: list,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    stack = launch_replicated(launch_stack)
    root = tmp_path / "archive"
    start(archive_proc(kafka_settings, root, tmp_path / "archive.log", max_age_s="1"), archives)

    results = asyncio.run(_load(stack, "scored", LOAD, 60.0, kill=(KILL_AT, "champ-1")))
    answered(results, LOAD)
    stack.restart("champ-1")

    seen: list[tuple[dict[str, int], dict[str, int]]] = []

    def archive_matches_topics() -> bool:
        """Every request scored by both models (the killed replica's share re-scored
        after the failover) and the archive holding exactly what the topics hold."""
        seen.append((_on_topics(kafka_settings, stack.topics), _archived(root)))
        on_topics, archived = seen[-1]
        return on_topics["scores"] == 2 * LOAD and archived == on_topics

    wait_for(archive_matches_topics, 90, lambda: f"topics, archive: {seen[-1]}")
    assert seen[-1][0]["requests"] == LOAD
    assert seen[-1][0]["decisions"] == LOAD

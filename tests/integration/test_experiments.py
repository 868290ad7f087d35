"""Champion against challenger on the real broker: the stack answers, the archive records,
the compare service (its own process, reading the archive's files) answers
``GET /v1/experiments/compare`` with the known latency quantiles (within the sketch's
error) and ordering, and ``rdv replay`` makes the challenger score past traffic again
without answering any client."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.common.archive_files import connect
from services.common.codec import decode
from services.common.messages import Reply
from services.common.settings import KafkaSettings
from services.compare.sketch import QUANTILES, RELATIVE_ACCURACY
from tests.integration.kafka_io import read_exactly
from tests.integration.stack import (
    Launch,
    Worker,
    launch_stack_fixture,  # noqa: F401 - the fixture
    model_spec,
    run_rdv,
    wait_for,
)
from tests.integration.test_archive import archive_proc, archives, start  # noqa: F401
from tests.integration.test_compare_service import compare_proc, compares  # noqa: F401

N = 40
POLICY = {
    "endpoint": "exp",
    "deadline_ms": 3000,
    "models": ["champ", "chall"],
    "stages": [{"until_ms": "deadline", "accept": ["champ"]}],
}


def _count(root: Path, sql: str) -> int:
    con = connect(root)
    try:
        row = con.execute(sql).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def _latencies(root: Path, model: str) -> list[float]:
    """Every ok score's latency for ``model`` as compare defines it, exactly, sorted."""
    con = connect(root)
    try:
        rows = con.execute(
            "SELECT s.finished_ms - r.created_ms FROM scores s JOIN requests r USING (request_id)"
            " WHERE s.model = ? AND s.status = 'ok' ORDER BY 1",
            [model],
        ).fetchall()
    finally:
        con.close()
    return [float(r[0]) for r in rows]


def _within_sketch_error(reported: float, exact: list[float], q: float) -> bool:
    """``reported`` is the q-quantile of ``exact`` up to the sketch's relative error (the
    rank q(n-1) may fall between two order statistics: either one is right)."""
    rank = q * (len(exact) - 1)
    low, high = exact[int(rank)], exact[min(int(rank) + 1, len(exact) - 1)]
    return low * (1 - RELATIVE_ACCURACY) <= reported <= high * (1 + RELATIVE_ACCURACY)


def _reply_ids(kafka: KafkaSettings, topic: str, expected: int) -> list[str]:
    """The request ids of every reply on ``topic`` (exactly ``expected`` of them)."""
    return [decode(r.value, Reply).request_id for r in read_exactly(kafka, topic, expected)]


def test_compare_and_replay_on_archived_traffic(
    launch_stack: Launch,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    archives: list,  # type: ignore[type-arg]  # noqa: F811
    compares: list,  # type: ignore[type-arg]  # noqa: F811
) -> None:
    root = tmp_path / "archive"
    champ = model_spec("champ", "latency", "champion", ["exp"], latency_ms=20)
    chall = model_spec("chall", "latency", "challenger", ["exp"], latency_ms=120)
    stack = launch_stack(
        policies=[POLICY], workers=[Worker("champ", champ), Worker("chall", chall)]
    )
    start(archive_proc(kafka_settings, root, tmp_path / "archive.log", max_age_s="1"), archives)
    experiments = start(compare_proc(root, tmp_path / "compare.log"), compares)
    for i in range(N):
        resp = stack.http.post("/v1/infer/exp", json={"inputs": {"n": i}})
        assert resp.status_code == 200, resp.text
    wait_for(
        lambda: (
            _count(root, "SELECT count(*) FROM scores") == 2 * N
            and _count(root, "SELECT count(*) FROM decisions") == N
        ),
        60,
        lambda: "the archive has not recorded the run",
    )

    report = httpx.get(
        f"{experiments.url}/v1/experiments/compare",
        params={"champion": "champ", "challenger": "chall", "endpoint": "exp"},
        timeout=30,
    ).json()
    champ_p50 = report["models"]["champ"]["latency_ms"]["p50"]
    chall_p50 = report["models"]["chall"]["latency_ms"]["p50"]
    assert report["paired"] == N
    for model in ("champ", "chall"):  # the known latencies, recorded in the archive
        exact = _latencies(root, model)
        assert len(exact) == N
        for q in QUANTILES:
            reported = report["models"][model]["latency_ms"][f"p{q * 100:g}"]
            assert _within_sketch_error(reported, exact, q), (model, q, reported, exact)
    assert 20 <= champ_p50 < chall_p50  # each takes at least its simulated compute
    assert chall_p50 >= 120
    assert report["models"]["champ"]["chosen"]["value"] == 1.0
    assert report["verdict"][0].startswith("latency p50: champ is faster")

    args = ["--endpoint", "exp", "--model", "chall", "--fast", "--mark", "rp1"]
    replay = run_rdv(kafka_settings, "replay", *args, "--archive", str(root))
    assert f"rp1: {N} sent, 0 failed" in replay.stdout
    replayed = "SELECT count(*) FROM scores WHERE request_id LIKE 'rp1:%'"
    marked = "SELECT count(*) FROM requests WHERE replay = 'rp1'"
    # the archive writes each table's file on its own schedule: wait for all three
    wait_for(
        lambda: (
            _count(root, replayed) == N
            and _count(root, "SELECT count(*) FROM decisions WHERE request_id LIKE 'rp1:%'") == N
            and _count(root, marked) == N
        ),
        60,
        lambda: f"replayed scores: {_count(root, replayed)}, requests: {_count(root, marked)}",
    )
    assert _count(root, replayed + " AND model = 'chall'") == N  # the champion stayed out
    replies = _reply_ids(kafka_settings, stack.topics.replies, N)  # the live ones, no more
    assert not [rid for rid in replies if rid.startswith("rp1:")]  # no client answered

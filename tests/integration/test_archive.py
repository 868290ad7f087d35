"""The archive as a real process (``python -m services.archive``) on the session's
broker: every record once in the query views, dead letters, file rotation, retention,
a clean stop that commits everything, a SIGKILL mid-run, and the archive beside the
real stack."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.archive.schema import to_table
from services.archive.store import HOUR_MS, PartStore, hour_of
from services.common.archive_files import KINDS, SCORES, connect
from services.common.codec import encode, message_key
from services.common.kafka import Consumer, Outbound, consumer_config
from services.common.messages import Decision, Feedback, RequestEnvelope, ScoreStatus
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from tests.factories import request, score_for
from tests.integration.kafka_io import produce_all, read_exactly
from tests.integration.stack import (
    Launch,
    Proc,
    Worker,
    free_port,
    launch_stack_fixture,  # noqa: F401 - registers the launch_stack fixture here
    model_spec,
    wait_for,
)

GROUP = "rdv.archive"
MODELS = (("fast", ScoreStatus.OK), ("slow", ScoreStatus.ERROR), ("lazy", ScoreStatus.SKIPPED))


def traffic(topics: Topics, n: int) -> dict[str, list[Outbound]]:
    """``n`` requests, each with an ok, an error and a skipped score, a decision and a
    client's feedback."""
    out: dict[str, list[Outbound]] = {kind: [] for kind in KINDS}
    for i in range(n):
        req = request({"text": f"hello {i}"})
        out["requests"].append(Outbound(topics.requests, message_key(req), encode(req)))
        for model, status in MODELS:
            score = score_for(
                req,
                model=model,
                status=status,
                output={"label": i} if status is ScoreStatus.OK else None,
                error="boom" if status is ScoreStatus.ERROR else None,
            )
            out["scores"].append(Outbound(topics.scores, message_key(score), encode(score)))
        decision = decision_for(req)
        out["decisions"].append(Outbound(topics.decisions, message_key(decision), encode(decision)))
        given = Feedback(
            request_id=req.request_id, reward=float(i % 2), received_ms=time.time() * 1000
        )
        out["feedback"].append(Outbound(topics.feedback, message_key(given), encode(given)))
    return out


def decision_for(req: RequestEnvelope) -> Decision:
    return Decision(
        request_id=req.request_id,
        endpoint=req.endpoint,
        chosen_model="fast",
        reason="champion_in_time",
        in_time=["fast", "slow"],
        late=["lazy"],
        latencies_ms={"fast": 1.0, "slow": 2.0, "lazy": 3000.0},
        elapsed_ms=1.5,
        decided_ms=time.time() * 1000,
    )


def produce(kafka: KafkaSettings, records: list[Outbound]) -> None:
    for start in range(0, len(records), 10_000):  # the producer's queue holds 20,000
        produce_all(kafka, records[start : start + 10_000])


def archive_proc(kafka: KafkaSettings, root: Path, log: Path, **env: str) -> Proc:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RDV_")}
    base |= {
        "RDV_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "RDV_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RDV_ARCHIVE_DIR": str(root),
        "RDV_ARCHIVE_OPS_PORT": str(port),
    }
    argv = [sys.executable, "-m", "services.archive"]
    env_vars = base | {f"RDV_ARCHIVE_{k.upper()}": v for k, v in env.items()}
    return Proc("archive", argv, env_vars, f"http://127.0.0.1:{port}", log)


@pytest.fixture
def archives() -> Iterator[list[Proc]]:
    """Archive processes a test started; any still running is stopped at teardown."""
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        if proc.alive and proc.popen is not None:
            proc.popen.kill()
            proc.popen.wait(10)


def start(proc: Proc, procs: list[Proc]) -> Proc:
    if proc not in procs:
        procs.append(proc)
    proc.spawn()
    wait_for(proc.ready, 60, lambda: proc.problem("not ready"))
    return proc


def stop(proc: Proc) -> None:
    """SIGTERM: the archive writes what it holds, commits, and exits 0."""
    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait_stopped() is None


def counts(root: Path, views: tuple[str, ...] = KINDS) -> dict[str, int]:
    con = connect(root)
    try:
        return {v: con.sql(f"SELECT count(*) FROM {v}").fetchall()[0][0] for v in views}
    finally:
        con.close()


def rows_written(proc: Proc) -> float:
    text = httpx.get(f"{proc.url}/metrics", timeout=5.0).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "rdv_archive_rows_total"
    )


def uncommitted(kafka: KafkaSettings, topics: Topics) -> dict[str, int]:
    """Per topic: records the archive's group has not committed yet."""
    probe = Consumer(consumer_config(kafka, kafka.topic_prefix + GROUP, "probe"))
    try:
        out = {}
        for role in KINDS:
            topic, parts = topics.by_role[role], topics.partitions(role)
            done = probe.committed(topic, parts)
            end = probe.end_offsets(topic, parts)
            out[role] = sum(end[p] - max(done[p], 0) for p in range(parts))
        return out
    finally:
        probe.close()


def test_every_record_is_archived_once_in_rotated_files_and_old_hours_expire(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path, archives: list[Proc]
) -> None:
    root = tmp_path / "archive"
    store = PartStore(root)
    now = time.time() * 1000
    old = store.write(SCORES, hour_of(int(now - 72 * HOUR_MS)), to_table(SCORES, []))
    kept = store.write(SCORES, hour_of(int(now - 3 * HOUR_MS)), to_table(SCORES, []))
    sent = traffic(topics, 300)
    garbage = Outbound(topics.scores, b"bad", b"{not a score")
    again = sent["decisions"][0]  # the same decision twice: one row
    produce(
        kafka_settings,
        [*sent["requests"], *sent["scores"], garbage, *sent["decisions"], *sent["feedback"]],
    )
    produce(kafka_settings, [again])

    proc = archive_proc(
        kafka_settings,
        root,
        tmp_path / "archive.log",
        max_rows="400",
        max_age_s="1",
        retention_hours="48",
    )
    start(proc, archives)
    want = {"requests": 300, "scores": 900, "decisions": 300, "feedback": 300}
    wait_for(lambda: counts(root) == want, 60, lambda: f"{counts(root)} != {want}")

    assert counts(root, ("requests_raw", "scores_raw", "decisions_raw")) == {
        "requests_raw": 300,
        "scores_raw": 900,
        "decisions_raw": 300,
    }
    con = connect(root)
    by_status = con.sql("SELECT model, status, count(*) FROM scores GROUP BY ALL ORDER BY 1")
    assert by_status.fetchall() == [
        ("fast", "ok", 300),
        ("lazy", "skipped", 300),
        ("slow", "error", 300),
    ]
    joined = con.sql(
        "SELECT count(*) FROM requests r JOIN decisions d USING (request_id) "
        "WHERE d.late = ['lazy'] AND json_extract_string(r.payload, '$.text') LIKE 'hello %'"
    )
    assert joined.fetchall() == [(300,)]
    con.close()
    letters = read_exactly(kafka_settings, topics.dead_letters, 1)
    assert json.loads(letters[0].value or b"{}")["service"] == "archive"

    files = {kind: sorted((root / kind).rglob("*.parquet")) for kind in KINDS}
    sizes = {kind: [pq.read_metadata(f).num_rows for f in fs] for kind, fs in files.items()}
    assert max(n for ns in sizes.values() for n in ns) <= 400  # rotated by size
    assert len([n for n in sizes["scores"] if n]) >= 3  # 900 rows: at least 3 files
    assert sum(sizes["requests"]) == 300  # never max_rows in the buffer: written by age
    assert not old.parent.exists()  # 72 h old, retention 48 h
    assert kept.exists()

    stop(proc)
    assert uncommitted(kafka_settings, topics) == dict.fromkeys(KINDS, 0)


def test_a_killed_archive_loses_nothing_and_its_views_show_no_duplicate(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path, archives: list[Proc]
) -> None:
    """Offsets are committed only at the clean stop here (a long auto-commit interval),
    so everything written before the SIGKILL is read and written again after the
    restart: duplicates are on disk for sure, and the views must not show them."""
    root = tmp_path / "archive"
    first, second = traffic(topics, 3000), traffic(topics, 500)
    produce(kafka_settings, [o for kind in KINDS for o in first[kind]])
    proc = archive_proc(
        kafka_settings,
        root,
        tmp_path / "archive.log",
        max_rows="1000",
        batch_size="500",
    )
    proc.env["RDV_KAFKA_CLIENT_CONFIG"] = json.dumps({"auto.commit.interval.ms": "600000"})
    start(proc, archives)
    wait_for(lambda: rows_written(proc) >= 3000, 60, lambda: proc.problem("wrote no rows"))
    assert proc.kill() == -signal.SIGKILL
    raw_views = tuple(f"{kind}_raw" for kind in KINDS)
    on_disk = sum(counts(root, raw_views).values())
    assert 3000 <= on_disk < 15_000, "killed too late to be mid-run"

    produce(kafka_settings, [o for kind in KINDS for o in second[kind]])
    start(proc, archives)
    want = {"requests": 3500, "scores": 10_500, "decisions": 3500, "feedback": 3500}
    wait_for(lambda: counts(root) == want, 90, lambda: f"{counts(root)} != {want}")
    raw = counts(root, raw_views)
    assert sum(raw.values()) >= sum(want.values()) + on_disk  # all of it written again
    con = connect(root)
    dup = con.sql(
        "SELECT count(*) FROM (SELECT request_id, model FROM scores GROUP BY ALL "
        "HAVING count(*) > 1)"
    )
    assert dup.fetchall() == [(0,)]
    con.close()

    stop(proc)
    assert uncommitted(kafka_settings, topics) == dict.fromkeys(KINDS, 0)


def test_the_archive_records_what_the_stack_saw(
    launch_stack: Launch, kafka_settings: KafkaSettings, tmp_path: Path, archives: list[Proc]
) -> None:
    root = tmp_path / "archive"
    stack = launch_stack(
        policies=[
            {
                "endpoint": "rec",
                "deadline_ms": 2000,
                "models": ["champ", "backup"],
                "stages": [
                    {"until_ms": 500, "accept": ["champ"]},
                    {"until_ms": "deadline", "accept": "any"},
                ],
            }
        ],
        workers=[
            Worker("champ", model_spec("champ", "echo", "champion", ["rec"])),
            Worker("backup", model_spec("backup", "failing", "challenger", ["rec"])),
        ],
    )
    start(archive_proc(kafka_settings, root, tmp_path / "archive.log", max_age_s="1"), archives)
    ids = []
    for i in range(30):
        resp = stack.http.post("/v1/infer/rec", json={"inputs": {"n": i}})
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["request_id"])
        given = stack.http.post("/v1/feedback", json={"request_id": ids[-1], "reward": i % 2})
        assert given.status_code == 202, given.text
    want = {"requests": 30, "scores": 60, "decisions": 30, "feedback": 30}
    wait_for(lambda: counts(root) == want, 60, lambda: f"{counts(root)} != {want}")

    con = connect(root)
    per_request = con.sql(
        "SELECT r.request_id, d.chosen_model, list_sort(list(s.model || ':' || s.status)) "
        "FROM requests r JOIN decisions d USING (request_id) JOIN scores s USING (request_id) "
        "GROUP BY ALL"
    ).fetchall()
    con.close()
    assert sorted(r[0] for r in per_request) == sorted(ids)
    assert {(r[1], tuple(r[2])) for r in per_request} == {("champ", ("backup:error", "champ:ok"))}
    stop(archives[0])

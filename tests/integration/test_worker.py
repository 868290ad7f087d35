"""Model workers on the real broker: in-process through the shared loop, and the
``python -m services.workers`` process from start to SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx
from pydantic import JsonValue

from services.common.codec import decode, encode, message_key
from services.common.kafka import Outbound, Record
from services.common.loop import RunStats
from services.common.messages import ErrorBody, RequestEnvelope, ReturnAddress, Score, ScoreStatus
from services.common.settings import KafkaSettings
from services.common.spec import load_spec
from services.common.topics import Topics
from services.workers.runtime import create_runtime
from services.workers.service import WorkerService, build_worker
from services.workers.settings import WorkerSettings
from tests.factories import request
from tests.integration.kafka_io import committed_total, produce_all, read_exactly

REPO = Path(__file__).resolve().parents[2]
FAST = "echo:name=fast,role=champion,endpoints=demo,latency_ms=1"


def worker(
    settings: KafkaSettings, topics: Topics, model: str = FAST, *cohosted: str
) -> WorkerService:
    spec, *more = (load_spec(m) for m in (model, *cohosted))
    return build_worker(
        kafka=settings,
        settings=WorkerSettings(auto_offset_reset="earliest", lag_interval_s=0.2),
        spec=spec,
        model=create_runtime(spec.runtime, spec.params),
        topics=topics,
        cohosted=[(m, create_runtime(m.runtime, m.params)) for m in more],
    )


def send(settings: KafkaSettings, topics: Topics, reqs: list[RequestEnvelope]) -> None:
    produce_all(settings, [Outbound(topics.requests, message_key(r), encode(r)) for r in reqs])


def scores_of(records: list[Record]) -> list[Score]:
    return [decode(r.value, Score) for r in records]


def fresh(payload: JsonValue, endpoint: str = "demo") -> RequestEnvelope:
    """A request whose deadline no slow test machine reaches (group joins take seconds)."""
    return request(payload, endpoint=endpoint, deadline_in_ms=120_000)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll an observable fact every 20 ms until it holds; fail after ``timeout_s``."""
    until = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < until, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.02)  # the poll interval, not a guess at how long anything takes


def expired_request(payload: str) -> RequestEnvelope:
    now = int(time.time() * 1000)
    return RequestEnvelope(
        request_id=f"expired-{payload}",
        endpoint="demo",
        payload=payload,
        return_address=ReturnAddress(topic="rdv.replies"),
        created_ms=now - 10_000,
        deadline_epoch_ms=now - 5_000,
        trace_id="t",
    )


def test_a_worker_scores_every_request_of_its_endpoint(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    reqs = [fresh({"n": i}) for i in range(20)]
    other = fresh("not mine", endpoint="other")
    send(kafka_settings, topics, [*reqs[:10], other, *reqs[10:]])

    stats = worker(kafka_settings, topics).run(max_records=21, idle_timeout_s=60)

    assert stats.records == 21
    records = read_exactly(kafka_settings, topics.scores, 20)  # none for "other"
    scores = scores_of(records)
    assert {s.request_id: s.output for s in scores} == {r.request_id: r.payload for r in reqs}
    assert {(s.status, s.model, s.endpoint) for s in scores} == {(ScoreStatus.OK, "fast", "demo")}
    assert all(r.key == s.request_id.encode() for r, s in zip(records, scores, strict=True))
    where = {r.key: r.partition for r in read_exactly(kafka_settings, topics.requests, 21)}
    assert all(r.partition == where[r.key] for r in records)  # co-partitioned with requests


def test_two_models_each_score_every_request(kafka_settings: KafkaSettings, topics: Topics) -> None:
    reqs = [fresh(i) for i in range(10)]
    send(kafka_settings, topics, reqs)
    slow = "latency:name=slow,role=challenger,endpoints=demo,latency_ms=5,jitter_ms=5,seed=1"

    for model in (FAST, slow):
        assert (
            worker(kafka_settings, topics, model).run(max_records=10, idle_timeout_s=60).records
            == 10
        )

    scores = scores_of(read_exactly(kafka_settings, topics.scores, 20))
    ids = sorted(r.request_id for r in reqs)
    for name in ("fast", "slow"):
        assert sorted(s.request_id for s in scores if s.model == name) == ids


def test_co_hosted_models_score_every_request_from_one_read_and_commit_after_both(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    reqs = [fresh(i) for i in range(12)]
    others = [fresh(f"other {i}", endpoint="other") for i in range(3)]
    send(kafka_settings, topics, [*reqs, *others])
    chall = "echo:name=chall,role=challenger,endpoints=demo+other,max_size=4"

    svc = worker(kafka_settings, topics, FAST, chall)
    stats = svc.run(max_records=15, idle_timeout_s=60)

    assert stats.records == 15  # each request read once, by the one consumer
    scores = scores_of(read_exactly(kafka_settings, topics.scores, 12 + 15))
    by_model = Counter(s.model for s in scores)
    assert by_model == {"fast": 12, "chall": 15}  # fast serves demo only
    assert {s.request_id for s in scores if s.model == "chall"} == {
        r.request_id for r in [*reqs, *others]
    }
    assert {(s.model, s.role.value) for s in scores} == {
        ("fast", "champion"),
        ("chall", "challenger"),
    }
    group = kafka_settings.topic_prefix + "rdv.models.chall+fast"
    committed = committed_total(kafka_settings, topics, group)
    assert committed == 15  # every offset committed once both models' scores were acked


def test_two_replicas_split_the_partitions_and_score_each_request_once(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    replicas = [worker(kafka_settings, topics) for _ in range(2)]
    results: dict[int, RunStats | BaseException] = {}

    def run(i: int) -> None:
        try:
            results[i] = replicas[i].run(idle_timeout_s=120)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:

        def split() -> bool:
            owned = [r.consumer.assignment for r in replicas]
            whole = {(topics.requests, p) for p in range(topics.partitions("requests"))}
            return (
                all(r.ready() for r in replicas)
                and owned[0] | owned[1] == whole
                and not (owned[0] & owned[1])
            )

        wait_until(split, 60, "both replicas to own half of the partitions")
        reqs = [fresh(i) for i in range(40)]
        send(kafka_settings, topics, reqs)
        scores = scores_of(read_exactly(kafka_settings, topics.scores, 40))
    finally:
        for r in replicas:
            r.stop()
        for t in threads:
            t.join(60)

    stats = [results[0], results[1]]
    assert all(isinstance(s, RunStats) for s in stats), stats
    counts = [s.records for s in stats if isinstance(s, RunStats)]
    assert sum(counts) == 40
    assert min(counts) > 0  # 40 random keys over 2 x 3 partitions: both get some
    assert Counter(s.request_id for s in scores) == Counter(r.request_id for r in reqs)


def test_an_expired_request_gets_a_skipped_score(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    live = fresh("live")
    send(kafka_settings, topics, [expired_request("late"), live])

    worker(kafka_settings, topics).run(max_records=2, idle_timeout_s=60)

    by_id = {s.request_id: s for s in scores_of(read_exactly(kafka_settings, topics.scores, 2))}
    assert (by_id["expired-late"].status, by_id["expired-late"].output) == (
        ScoreStatus.SKIPPED,
        None,
    )
    assert (by_id[live.request_id].status, by_id[live.request_id].output) == (
        ScoreStatus.OK,
        "live",
    )


def test_a_failing_model_answers_with_error_scores_before_the_deadline(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    reqs = [request(i, deadline_in_ms=30_000) for i in range(5)]
    send(kafka_settings, topics, reqs)
    flaky = str(REPO / "models" / "specs" / "flaky.yaml")

    worker(kafka_settings, topics, flaky).run(max_records=5, idle_timeout_s=60)

    scores = scores_of(read_exactly(kafka_settings, topics.scores, 5, timeout_s=20))
    assert time.time() * 1000 < min(r.deadline_epoch_ms for r in reqs)  # nobody waited for it
    failed = ErrorBody(code="prediction_failed", message="flaky fails every request on purpose")
    assert {(s.model, s.status, s.error) for s in scores} == {("flaky", ScoreStatus.ERROR, failed)}
    assert sorted(s.request_id for s in scores) == sorted(r.request_id for r in reqs)


class StderrLines:
    """Reads a process's stderr on a thread; hands out lines with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stderr is not None
        self.thread = threading.Thread(target=self._pump, args=(proc.stderr,))
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, msg: str, timeout_s: float) -> dict[str, object]:
        until = time.monotonic() + timeout_s
        while True:
            left = until - time.monotonic()
            assert left > 0, f"no log line {msg!r} within {timeout_s} s: {self.seen[-5:]}"
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith("{") and (entry := json.loads(line)).get("msg") == msg:
                return dict(entry)


def test_the_worker_process_serves_until_sigterm(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    env = {
        **os.environ,
        "RDV_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "RDV_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "RDV_WORKER_AUTO_OFFSET_RESET": "earliest",
        "RDV_WORKER_OPS_PORT": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "services.workers",
        "--model",
        "echo:name=proc,role=champion,endpoints=demo",
    ]
    with subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:
        logs = StderrLines(proc)
        try:
            port = logs.wait_for("ops server listening", 60)["port"]
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            wait_until(
                lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 60, "/readyz"
            )

            req = fresh({"hello": "worker"})
            send(kafka_settings, topics, [req])
            (score,) = scores_of(read_exactly(kafka_settings, topics.scores, 1))
            assert (score.request_id, score.model, score.output) == (
                req.request_id,
                "proc",
                req.payload,
            )
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            assert 'rdv_worker_scored_total{model="proc"} 1.0' in metrics

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            logs.thread.join(10)
            logs.wait_for("worker stopped", 1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            logs.thread.join(10)

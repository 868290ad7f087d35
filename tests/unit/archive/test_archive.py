"""The archive processor, its buffers and its Parquet store, without a broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from services.archive.buffer import Limits, RecentKeys
from services.archive.schema import to_table
from services.archive.service import Archive
from services.archive.store import HOUR_MS, PartStore, hour_of, partition_dir
from services.common.archive_files import DECISIONS, REQUESTS, SCORES, connect
from services.common.codec import decode, encode
from services.common.kafka import Record
from services.common.loop import Context, Inbound, StreamRunner
from services.common.messages import (
    DeadLetter,
    Decision,
    ErrorBody,
    OodCheck,
    RequestEnvelope,
    ScoreStatus,
    error_from_text,
)
from services.common.topics import Topics, load_topics
from tests.factories import request, score_for
from tests.unit.common.test_loop import FakeConsumer, FakeProducer

NOW_MS = 1_764_158_400_000  # 2025-11-26T12:00:00Z, an hour boundary
BOOM = ErrorBody(code="prediction_failed", message="boom")


class FakeClock:
    def __init__(self) -> None:
        self.ms = 0.0

    def __call__(self) -> float:
        return self.ms


@pytest.fixture
def topics() -> Topics:
    return load_topics(prefix="t.")


def decision_for(req: RequestEnvelope, **over: object) -> Decision:
    fields: dict[str, object] = {
        "request_id": req.request_id,
        "endpoint": req.endpoint,
        "chosen_model": "fast",
        "reason": "champion_in_time",
        "in_time": ["fast"],
        "late": ["slow"],
        "latencies_ms": {"fast": 3.5, "slow": 900.0},
        "elapsed_ms": 3.6,
        "decided_ms": time.time() * 1000,
    }
    return Decision.model_validate(fields | over)


class Feed:
    """Records with increasing offsets per topic, all stamped ``ts`` by the 'broker'."""

    def __init__(self, topics: Topics, ts: int = NOW_MS) -> None:
        self.topics = topics
        self.ts = ts
        self.offsets: dict[str, int] = {}

    def item(self, msg: RequestEnvelope | Decision | object, topic: str) -> Inbound:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        value = encode(msg)  # type: ignore[arg-type]
        return Inbound(Record(topic, 0, offset, b"k", value, (), self.ts), msg)


def make_archive(
    topics: Topics, root: Path, clock: FakeClock, *, max_rows: int = 100, window: int = 1000
) -> Archive:
    return Archive(
        topics=topics,
        store=PartStore(root),
        limits=Limits(max_rows=max_rows, max_bytes=1 << 30, max_age_ms=5000),
        retention_hours=24,
        dedup_window=window,
        clock=clock,
        wall=lambda: NOW_MS + 1000,
    )


def test_rows_are_held_until_their_file_is_written(topics: Topics, tmp_path: Path) -> None:
    clock = FakeClock()
    archive = make_archive(topics, tmp_path, clock, max_rows=3)
    feed = Feed(topics)
    reqs = [request({"text": f"r{i}"}) for i in range(3)]
    ctx = Context()
    archive.process([feed.item(r, topics.requests) for r in reqs[:2]], ctx)
    archive.tick(0, ctx)
    assert len(ctx.holds) == 2
    assert ctx.releases == []
    assert not list(tmp_path.rglob("*.parquet"))

    archive.process([feed.item(reqs[2], topics.requests)], ctx)
    archive.tick(0, ctx)  # max_rows reached
    assert sorted(r.offset for r in ctx.releases) == [0, 1, 2]
    files = list(tmp_path.rglob("*.parquet"))
    assert len(files) == 1
    assert files[0].parent == partition_dir(tmp_path, REQUESTS, hour_of(NOW_MS))
    assert files[0].parent.parts[-2:] == ("date=2025-11-26", "hour=12")


def test_files_hold_at_most_max_rows(topics: Topics, tmp_path: Path) -> None:
    archive = make_archive(topics, tmp_path, FakeClock(), max_rows=2)
    feed = Feed(topics)
    ctx = Context()
    archive.process([feed.item(request(i), topics.requests) for i in range(5)], ctx)
    archive.tick(0, ctx)  # one batch overshoots the bound
    assert len(ctx.releases) == 5
    counts = sorted(pq.read_metadata(p).num_rows for p in tmp_path.rglob("*.parquet"))
    assert counts == [1, 2, 2]


def test_a_buffer_is_written_once_its_oldest_record_is_old_enough(
    topics: Topics, tmp_path: Path
) -> None:
    clock = FakeClock()
    archive = make_archive(topics, tmp_path, clock)
    feed = Feed(topics)
    ctx = Context()
    archive.process([feed.item(request(1), topics.requests)], ctx)
    clock.ms = 4999
    archive.tick(0, ctx)
    assert ctx.releases == []
    clock.ms = 5000
    archive.tick(0, ctx)
    assert len(ctx.releases) == 1
    assert connect(tmp_path).sql("SELECT count(*) FROM requests").fetchall() == [(1,)]


def test_every_field_is_queryable(topics: Topics, tmp_path: Path) -> None:
    clock = FakeClock()
    archive = make_archive(topics, tmp_path, clock)
    feed = Feed(topics)
    req = RequestEnvelope.model_validate(
        request({"text": "héllo", "n": [1, 2.5]}).model_dump() | {"attributes": {"replay": "r1"}}
    )
    scores = [
        score_for(req, model="fast", output={"label": "x"}),
        score_for(req, model="slow", status=ScoreStatus.ERROR, error=BOOM),
        score_for(req, model="late", status=ScoreStatus.SKIPPED),
    ]
    ood = OodCheck(status="flagged", detector="ood", score=0.93)
    items = [
        feed.item(req, topics.requests),
        *(feed.item(s, topics.scores) for s in scores),
        feed.item(decision_for(req, ood=ood, policy_version=4), topics.decisions),
    ]
    ctx = Context()
    archive.process(items, ctx)
    archive.drain()
    archive.tick(0, ctx)
    assert len(ctx.releases) == 5
    con = connect(tmp_path)
    [row] = con.sql(
        "SELECT payload, attributes['replay'], replay, created_ms, topic, date, hour FROM requests"
    ).fetchall()
    assert row[0] == '{"text":"héllo","n":[1,2.5]}'
    assert row[1:5] == ("r1", "r1", req.created_ms, topics.requests)
    assert str(row[5]) == "2025-11-26"
    assert row[6] == 12
    got = con.sql("SELECT model, status, output, error FROM scores ORDER BY model").fetchall()
    assert got == [
        ("fast", "ok", '{"label":"x"}', None),
        ("late", "skipped", None, None),
        ("slow", "error", None, "[prediction_failed] boom"),  # one text column, as before
    ]
    assert error_from_text(got[2][3]) == BOOM  # the code reads back
    dec = con.sql(
        "SELECT chosen_model, in_time, late, latencies_ms['slow'], policy_version, "
        "ood_status, ood_detector, ood_score FROM decisions"
    ).fetchall()
    assert dec == [("fast", ["fast"], ["slow"], 900.0, 4, "flagged", "ood", 0.93)]


def test_duplicates_are_dropped_but_wait_for_the_same_write(topics: Topics, tmp_path: Path) -> None:
    clock = FakeClock()
    archive = make_archive(topics, tmp_path, clock, max_rows=2)
    feed = Feed(topics)
    req = request(1)
    first = [feed.item(req, topics.requests), feed.item(score_for(req), topics.scores)]
    again = [feed.item(req, topics.requests), feed.item(score_for(req), topics.scores)]
    other_model = feed.item(score_for(req, model="other"), topics.scores)
    ctx = Context()
    archive.process([*first, *again, other_model], ctx)
    assert len(ctx.holds) == 5
    archive.tick(0, ctx)  # scores: 2 rows, due; requests: 1 row, not due
    assert {(r.topic, r.offset) for r in ctx.releases} == {
        (topics.scores, 0),
        (topics.scores, 1),
        (topics.scores, 2),
    }
    archive.drain()
    archive.tick(0, ctx)
    assert len(ctx.releases) == 5
    con = connect(tmp_path)
    assert con.sql("SELECT count(*) FROM requests_raw").fetchall() == [(1,)]
    assert con.sql("SELECT count(*) FROM scores_raw").fetchall() == [(2,)]


def test_a_failing_row_leaves_no_trace(topics: Topics, tmp_path: Path) -> None:
    clock = FakeClock()
    archive = make_archive(topics, tmp_path, clock)
    feed = Feed(topics)
    good = feed.item(request(1), topics.requests)
    bad = Inbound(Record(topics.scores, 0, 0, b"k", b"{}", (), NOW_MS), object())
    ctx = Context()
    with pytest.raises(AttributeError):
        archive.process([good, bad], ctx)
    assert ctx.holds == []
    assert all(not b.records for b in archive.buffers.values())
    archive.process([good], ctx)  # the loop's retry, record by record: not a duplicate
    assert archive.buffers[REQUESTS].row_count == 1


def test_drain_writes_everything_then_stops(topics: Topics, tmp_path: Path) -> None:
    clock = FakeClock()
    archive = make_archive(topics, tmp_path, clock)
    stopped: list[bool] = []
    archive.on_drained = lambda: stopped.append(True)
    feed = Feed(topics)
    req = request(1)
    ctx = Context()
    archive.process([feed.item(decision_for(req), topics.decisions)], ctx)
    archive.tick(0, ctx)
    assert stopped == []
    archive.drain()
    archive.tick(0, ctx)
    assert stopped == [True]
    assert len(ctx.releases) == 1
    assert connect(tmp_path).sql(f"SELECT count(*) FROM {DECISIONS}").fetchall() == [(1,)]


def test_rows_go_to_the_hour_their_record_was_written(topics: Topics, tmp_path: Path) -> None:
    clock = FakeClock()
    archive = make_archive(topics, tmp_path, clock)
    ctx = Context()
    for ts in (NOW_MS - 1, NOW_MS, NOW_MS + 1):
        feed = Feed(topics, ts=ts)
        archive.process([feed.item(score_for(request(1)), topics.scores)], ctx)
    archive.drain()
    archive.tick(0, ctx)
    hours = sorted(p.parent.name for p in tmp_path.rglob("*.parquet"))
    assert hours == ["hour=11", "hour=12"]
    con = connect(tmp_path)
    assert con.sql("SELECT hour, count(*) FROM scores GROUP BY 1 ORDER BY 1").fetchall() == [
        (11, 1),
        (12, 2),
    ]


def test_retention_deletes_hour_partitions_that_ended_before_it(tmp_path: Path) -> None:
    store = PartStore(tmp_path)
    for hours_ago in (0, 23, 24, 25, 48):
        store.write(SCORES, NOW_MS - hours_ago * HOUR_MS, to_table(SCORES, []))
    gone = store.expire(SCORES, NOW_MS + 1, retention_ms=24 * HOUR_MS)
    assert len(gone) == 2  # 25 and 48 hours ago ended more than 24 h ago
    left = [hour for hour, _ in store.partitions(SCORES)]
    assert left == [NOW_MS - h * HOUR_MS for h in (24, 23, 0)]
    assert not (tmp_path / SCORES / "date=2025-11-24").exists()  # its one hour went


def test_temporaries_of_a_killed_writer_are_removed_and_never_read(tmp_path: Path) -> None:
    store = PartStore(tmp_path)
    path = store.write(REQUESTS, NOW_MS, to_table(REQUESTS, []))
    tmp = path.parent / ".part-1-1-abc.parquet.tmp"
    tmp.write_bytes(b"half a file")
    assert connect(tmp_path).sql("SELECT count(*) FROM requests").fetchall() == [(0,)]
    assert store.remove_temporaries() == 1
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_query_views_show_each_row_once_across_files(topics: Topics, tmp_path: Path) -> None:
    clock = FakeClock()
    feed = Feed(topics)
    req = request(1)
    items = [feed.item(req, topics.requests), feed.item(score_for(req), topics.scores)]
    for _ in range(2):  # two runs: the second forgot what the first wrote
        archive = make_archive(topics, tmp_path, clock)
        ctx = Context()
        archive.process(items, ctx)
        archive.drain()
        archive.tick(0, ctx)
    con = connect(tmp_path)
    for kind in (REQUESTS, SCORES):
        assert con.sql(f"SELECT count(*) FROM {kind}_raw").fetchall() == [(2,)]
        assert con.sql(f"SELECT count(*) FROM {kind}").fetchall() == [(1,)]


def test_recent_keys_forget_the_oldest_first() -> None:
    keys = RecentKeys(2)
    assert keys.add("a")
    assert keys.add("b")
    assert not keys.add("a")
    assert keys.add("c")  # forgets a
    assert "a" not in keys
    assert len(keys) == 2
    assert RecentKeys(0).add("a")
    assert RecentKeys(0).add("a")


def test_the_archive_process_does_not_load_torch() -> None:
    code = "import sys, services.archive.__main__; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False"]


def _raw_request(**over: object) -> bytes:
    """A request's bytes with fields replaced: values the codec accepts as they are."""
    return json.dumps(json.loads(encode(request(1))) | over).encode()


def test_a_record_arrow_cannot_store_is_dead_lettered_not_crash_looping(
    topics: Topics, tmp_path: Path
) -> None:
    """A lone surrogate ("\\ud800" in the JSON), an int64 overflow and a record stamped
    past the year 9999 decode fine but cannot be written: each must fail in process (the
    loop dead-letters it), not at the flush in tick (nothing would, at every restart)."""
    values = [
        encode(request({"text": "fine"})),
        _raw_request(payload={"text": "\ud800"}),
        _raw_request(created_ms=10**20, deadline_ms=10**20 + 1),
        encode(request({"text": "fine too"})),
    ]
    stamps = [NOW_MS, NOW_MS, NOW_MS, 10**15]  # 10**15 ms: the year 33658
    records = [
        Record(topics.requests, 0, i, b"k", value, (), ts)
        for i, (value, ts) in enumerate(zip(values, stamps, strict=True))
    ] + [Record(topics.requests, 0, 4, b"k", encode(request(2)), (), NOW_MS)]
    consumer, producer = FakeConsumer(records), FakeProducer()
    consumer.assignment = frozenset({(topics.requests, 0)})
    archive = make_archive(topics, tmp_path, FakeClock())
    runner = StreamRunner(
        service="archive",
        consumer=consumer,
        producer=producer,  # type: ignore[arg-type]
        decoders={topics.requests: lambda b: decode(b, RequestEnvelope)},
        processor=archive,
        dead_letter_topic=topics.dead_letters,
    )
    archive.on_drained = runner.stop
    archive.drain()  # write at the first tick, then stop

    stats = runner.run(max_records=5)

    letters = [decode(o.value, DeadLetter) for o in producer.sent]
    assert [(d.origin_offset, d.error_code) for d in letters] == [
        (1, "UnicodeEncodeError"),
        (2, "OverflowError"),
        (3, "ValueError"),
    ]
    assert stats.dead_letters == 3
    assert consumer.committed == {(topics.requests, 0): 5}  # nothing left to fail again
    assert connect(tmp_path).sql("SELECT count(*) FROM requests").fetchall() == [(2,)]


def test_directories_that_are_no_hour_are_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PartStore(tmp_path)
    kept = store.write(SCORES, NOW_MS - 48 * HOUR_MS, to_table(SCORES, [])).parent
    for bogus in ("date=2025-11-26/hour=24", "date=2026-13-40/hour=01"):
        (tmp_path / SCORES / bogus).mkdir(parents=True)
    assert store.partitions(SCORES) == [(NOW_MS - 48 * HOUR_MS, kept)]
    assert store.expire(SCORES, NOW_MS, retention_ms=24 * HOUR_MS) == [kept]
    assert (tmp_path / SCORES / "date=2025-11-26" / "hour=24").is_dir()  # left alone
    assert sum("not an hour partition" in r.message for r in caplog.records) == 4

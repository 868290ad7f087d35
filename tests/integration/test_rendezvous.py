"""The rendezvous on the real broker, fed with requests and scores written by the test
(so each model's timing is exact): one reply and one decision per request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.codec import decode, encode, message_key
from services.common.kafka import Outbound
from services.common.loop import StreamRunner
from services.common.messages import Decision, Reply, RequestEnvelope, ScoreStatus
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.rendezvous.__main__ import build
from services.rendezvous.settings import RendezvousSettings
from tests.conftest import free_port_pair
from tests.factories import request, score_for
from tests.integration.kafka_io import produce_all, read_all_after, read_exactly, running

POLICY = """
endpoint: t
deadline_ms: 5000
models: [champ, backup]
stages:
  - {until_ms: 200, accept: [champ]}
  - {until_ms: 600, accept: [champ, backup]}
  - {until_ms: deadline, accept: any}
default:
  error: {code: deadline_exceeded, message: no acceptable answer by the deadline}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def rendezvous(
    kafka_settings: KafkaSettings, topics: Topics, policy_file: Path
) -> Iterator[StreamRunner]:
    settings = RendezvousSettings(policies=policy_file, auto_offset_reset="earliest", ops_port=0)
    runner, _ = build(settings, kafka_settings)
    with running(runner):
        yield runner


def req(topics: Topics, deadline_in_ms: int = 2000) -> RequestEnvelope:
    return request("q", endpoint="t", deadline_in_ms=deadline_in_ms, reply_topic=topics.replies)


def send(settings: KafkaSettings, topic: str, *messages: object) -> None:
    produce_all(settings, [Outbound(topic, message_key(m), encode(m)) for m in messages])  # type: ignore[arg-type]


def replies(settings: KafkaSettings, topics: Topics, count: int) -> dict[str, Reply]:
    got = [decode(r.value, Reply) for r in read_exactly(settings, topics.replies, count)]
    assert len(got) == count, f"expected exactly {count} replies, got {len(got)}"
    return {r.request_id: r for r in got}


def test_each_request_gets_the_answer_its_schedule_allows(
    kafka_settings: KafkaSettings, topics: Topics, rendezvous: StreamRunner
) -> None:
    in_time, late_champ, failing, dup, nothing = (req(topics) for _ in range(5))
    nothing = req(topics, deadline_in_ms=1500)  # arrives well before its deadline
    # one producer, requests first: each score reaches the rendezvous right after its
    # request, so "in time" and "late" are the schedule's doing, not the test's
    produce_all(
        kafka_settings,
        [
            *(
                Outbound(topics.requests, message_key(r), encode(r))
                for r in (in_time, late_champ, failing, dup, nothing)
            ),
            *(
                Outbound(topics.scores, message_key(s), encode(s))
                for s in (
                    score_for(in_time, model="champ", output="c"),
                    score_for(late_champ, model="backup", output="b"),
                    score_for(failing, model="champ", status=ScoreStatus.ERROR, error="crash"),
                    score_for(failing, model="backup", output="b"),
                    score_for(dup, model="champ", output="first"),
                    score_for(dup, model="champ", output="again"),
                )
            ),
        ],
    )

    got = replies(kafka_settings, topics, 5)

    assert (got[in_time.request_id].model, got[in_time.request_id].reason) == (
        "champ",
        "champion_in_time",
    )
    fallback = got[late_champ.request_id]
    assert (fallback.model, fallback.reason) == ("backup", "fallback:1")
    decisions = [
        decode(r.value, Decision) for r in read_exactly(kafka_settings, topics.decisions, 5)
    ]
    by_id = {d.request_id: d for d in decisions}
    assert by_id[late_champ.request_id].elapsed_ms >= 200  # waited for the champion
    quick = got[failing.request_id]
    assert (quick.model, quick.reason) == ("backup", "fallback:1")
    assert by_id[failing.request_id].elapsed_ms < 200  # did not wait: the champion failed
    assert got[dup.request_id].output == "first"
    timed_out = got[nothing.request_id]
    assert timed_out.error is not None
    assert timed_out.error.code == "deadline_exceeded"
    assert 0 <= timed_out.decided_ms - nothing.deadline_epoch_ms <= 50
    assert sorted(by_id) == sorted(got)
    assert by_id[late_champ.request_id].late == ["champ"]
    assert by_id[in_time.request_id].in_time == ["champ"]


def _start(settings: KafkaSettings, policy: Path, ops_port: int = 0) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RDV_KAFKA_BOOTSTRAP": settings.bootstrap,
        "RDV_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        # nothing is committed before the kill: the restart must rely on read-back
        "RDV_KAFKA_CLIENT_CONFIG": '{"auto.commit.interval.ms": "600000"}',
        "RDV_RENDEZVOUS_POLICIES": str(policy),
        "RDV_RENDEZVOUS_OPS_PORT": str(ops_port),
        "RDV_RENDEZVOUS_AUTO_OFFSET_RESET": "earliest",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.rendezvous"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_killed_rendezvous_restarts_without_answering_twice_or_forgetting(
    kafka_settings: KafkaSettings, topics: Topics, policy_file: Path
) -> None:
    answered = [req(topics, deadline_in_ms=20_000) for _ in range(30)]
    still_open = [req(topics, deadline_in_ms=20_000) for _ in range(10)]
    first = _start(kafka_settings, policy_file)
    try:
        send(kafka_settings, topics.requests, *answered, *still_open)
        send(
            kafka_settings,
            topics.scores,
            *(score_for(r, model="champ", output=i) for i, r in enumerate(answered)),
        )
        assert len(replies(kafka_settings, topics, 30)) == 30
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    second = _start(kafka_settings, policy_file)
    try:
        send(
            kafka_settings,
            topics.scores,
            *(score_for(r, model="champ", output="late") for r in still_open),
        )
        got = [decode(r.value, Reply) for r in read_exactly(kafka_settings, topics.replies, 40)]
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    ids = [r.request_id for r in got]
    assert len(ids) == len(set(ids)) == 40  # every request answered, none twice
    assert {r.request_id for r in got if r.output == "late"} == {r.request_id for r in still_open}
    decisions = read_exactly(kafka_settings, topics.decisions, 40)
    assert len({decode(d.value, Decision).request_id for d in decisions}) == len(decisions)


def test_malformed_records_on_both_inputs_go_to_dead_letters(
    kafka_settings: KafkaSettings, topics: Topics, rendezvous: StreamRunner
) -> None:
    good = req(topics, deadline_in_ms=30_000)  # the answer's timing is not what is tested
    produce_all(
        kafka_settings,
        [
            Outbound(topics.requests, b"x", b"not json"),
            Outbound(topics.scores, b"y", b'{"v": 1, "kind": "score"}'),
        ],
    )
    send(kafka_settings, topics.requests, good)
    send(kafka_settings, topics.scores, score_for(good, model="champ", output="ok"))

    assert replies(kafka_settings, topics, 1)[good.request_id].output == "ok"
    letters = read_exactly(kafka_settings, topics.dead_letters, 2)
    assert sorted(decode_origin(r.value) for r in letters) == sorted(
        [topics.requests, topics.scores]
    )
    assert rendezvous.healthy()


def decode_origin(value: bytes | None) -> str:
    from services.common.messages import DeadLetter  # noqa: PLC0415

    return decode(value, DeadLetter).origin_topic


def test_a_request_for_an_endpoint_without_policy_is_answered_at_once(
    kafka_settings: KafkaSettings, topics: Topics, rendezvous: StreamRunner
) -> None:
    # a deadline far off: "at once" is an answer long before it (a loaded test machine
    # may take a second or two to pass a record round), not a wait for the deadline
    stray = request("q", endpoint="nope", reply_topic=topics.replies, deadline_in_ms=60_000)
    began = time.time() * 1000
    send(kafka_settings, topics.requests, stray)
    reply = replies(kafka_settings, topics, 1)[stray.request_id]
    assert reply.error is not None
    assert reply.error.code == "unknown_endpoint"
    assert reply.decided_ms - began < 10_000


def test_two_instances_share_the_partitions_and_answer_each_request_once(
    kafka_settings: KafkaSettings, topics: Topics, policy_file: Path
) -> None:
    """A second instance joins while requests are open: the partitions it takes are
    dropped by the first one (undecided) and answered by the new owner, once."""
    early = [req(topics, deadline_in_ms=10_000) for _ in range(24)]
    late: list[RequestEnvelope] = []
    ops = free_port_pair()
    first = _start(kafka_settings, policy_file, ops_port=ops)
    second: subprocess.Popen[bytes] | None = None
    try:
        send(kafka_settings, topics.requests, *early)
        until = time.monotonic() + 60
        while open_mailboxes(ops) < 24:  # the first instance holds every early request
            assert time.monotonic() < until, "the first instance never opened 24 mailboxes"
            time.sleep(0.1)  # polling another process's metrics
        ops2 = free_port_pair()
        second = _start(kafka_settings, policy_file, ops_port=ops2)
        while not ready(ops2):  # the group has rebalanced: B owns some partitions
            assert time.monotonic() < until, "the second instance never got partitions"
            time.sleep(0.1)  # polling another process's readiness
        late = [req(topics, deadline_in_ms=6000) for _ in range(24)]
        send(kafka_settings, topics.requests, *late)
        send(
            kafka_settings,
            topics.scores,
            *(score_for(r, model="champ", output="ok") for r in (*early, *late)),
        )
        read_exactly(kafka_settings, topics.replies, 48, timeout_s=60)
        # read again until every deadline has passed: a mailbox left behind in the
        # wrong instance would have been answered (by default) at its deadline
        got = read_all_after(
            kafka_settings, topics.replies, max(r.deadline_epoch_ms for r in (*early, *late)) + 500
        )
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in (first, second) if p is not None]
    replies = [decode(r.value, Reply) for r in got]
    assert sorted(r.request_id for r in replies) == sorted(r.request_id for r in (*early, *late))
    assert {r.output for r in replies} == {"ok"}
    assert codes == [0, 0]


def open_mailboxes(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("rdv_rendezvous_open_mailboxes "):
            return float(line.split()[1])
    return 0.0


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False

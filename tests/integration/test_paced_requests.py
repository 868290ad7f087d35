"""The rendezvous reading the requests topic in batches, on the real broker: a score
that carries a copy of its request is answered before the request record is read; the
record, read at the next interval, is checked off without a second answer; and a
request no model answers is still read in time to be answered by its deadline."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.common.codec import decode, encode, message_key
from services.common.kafka import Consumer, Outbound, Record, consumer_config
from services.common.loop import StreamRunner
from services.common.messages import Reply, RequestEnvelope
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.rendezvous.__main__ import build
from services.rendezvous.settings import RendezvousSettings
from tests.factories import request, score_for
from tests.integration.kafka_io import produce_all, read_exactly, running

INTERVAL_MS = 2000
POLICY = """
endpoint: t
deadline_ms: 10000
models: [champ]
stages: [{until_ms: deadline, accept: any}]
default:
  error: {code: deadline_exceeded, message: no acceptable answer by the deadline}
"""


@pytest.fixture
def rendezvous(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path
) -> Iterator[StreamRunner]:
    (tmp_path / "t.yaml").write_text(POLICY)
    settings = RendezvousSettings(
        policies=tmp_path / "t.yaml",
        auto_offset_reset="earliest",
        ops_port=0,
        request_read_interval_ms=INTERVAL_MS,
    )
    runner, _ = build(settings, kafka_settings)
    with running(runner):
        yield runner


def requests_read(topics: Topics) -> float:
    labels = {"service": "rendezvous", "topic": topics.requests}
    return REGISTRY.get_sample_value("rdv_stream_records_total", labels) or 0.0


def send(kafka_settings: KafkaSettings, topics: Topics, req: RequestEnvelope) -> None:
    score = score_for(req, model="champ", output=req.payload, copy=True)
    produce_all(
        kafka_settings,
        [
            Outbound(topics.requests, message_key(req), encode(req)),
            Outbound(topics.scores, message_key(score), encode(score)),
        ],
    )


def read_after(topics: Topics, count: float) -> None:
    """Wait until the rendezvous has read more than ``count`` request records."""
    until = time.monotonic() + 30
    while requests_read(topics) <= count:
        assert time.monotonic() < until, "the request record was never read"
        time.sleep(0.05)  # polling a counter: there is no event to wait on


def test_a_score_with_a_copy_is_answered_before_its_request_is_read(
    kafka_settings: KafkaSettings, topics: Topics, rendezvous: StreamRunner
) -> None:
    warm = request("warm", endpoint="t", reply_topic=topics.replies)
    before = requests_read(topics)
    send(kafka_settings, topics, warm)
    read_after(topics, before)  # a read closes the requests topic for INTERVAL_MS
    read_exactly(kafka_settings, topics.replies, 1)

    req = request("q", endpoint="t", reply_topic=topics.replies)
    replies = Consumer(consumer_config(kafka_settings, f"r-{uuid.uuid4().hex}", "test-reader"))
    try:  # reads from now on: the reply is seen the moment it is written
        parts = topics.partitions("replies")
        replies.assign_from(topics.replies, replies.end_offsets(topics.replies, parts))
        before = requests_read(topics)
        sent = time.monotonic()
        send(kafka_settings, topics, req)
        got: list[Record] = []
        while not got:
            assert time.monotonic() < sent + 30, "no reply"
            got = replies.consume(10, 0.05)
        unread = requests_read(topics) == before
        answered_s = time.monotonic() - sent
    finally:
        replies.close()
    read_after(topics, before)  # the next interval reads it
    assert unread, f"answered {answered_s:.2f} s after sending, once the request was read"
    [rec] = got
    reply = decode(rec.value, Reply)
    assert (reply.request_id, reply.model, reply.output) == (req.request_id, "champ", "q")
    # checked off without a second answer (read_exactly fails on an extra record)
    read_exactly(kafka_settings, topics.replies, 2)
    read_exactly(kafka_settings, topics.decisions, 2)


def test_a_request_no_model_answers_is_answered_by_its_deadline(
    kafka_settings: KafkaSettings, topics: Topics, rendezvous: StreamRunner
) -> None:
    req = request("q", endpoint="t", deadline_in_ms=INTERVAL_MS + 1500, reply_topic=topics.replies)
    produce_all(kafka_settings, [Outbound(topics.requests, message_key(req), encode(req))])
    [rec] = read_exactly(kafka_settings, topics.replies, 1)
    reply = decode(rec.value, Reply)
    assert reply.error is not None
    assert reply.error.code == "deadline_exceeded"
    assert 0 <= reply.decided_ms - req.deadline_epoch_ms <= 100

"""The rendezvous on the real broker with the two return addresses from issue 11 that
stopped it: a partition that does not exist and a topic that does not exist. Each is
dead-lettered alone, every other request is answered, the process goes on, and the
offsets move past them (no crash loop on restart)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.codec import decode, encode, message_key
from services.common.kafka import Consumer, Outbound, consumer_config
from services.common.loop import StreamRunner
from services.common.messages import DeadLetter, Reply, RequestEnvelope, ReturnAddress
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.rendezvous.__main__ import build
from services.rendezvous.settings import RendezvousSettings
from tests.factories import request, score_for
from tests.integration.kafka_io import produce_all, read_exactly, running

pytestmark = pytest.mark.integration

POLICY = """
endpoint: t
deadline_ms: 5000
models: [champ]
stages:
  - {until_ms: deadline, accept: [champ]}
default:
  error: {code: deadline_exceeded, message: no answer by the deadline}
"""
GROUP = "rdv.rendezvous"


@pytest.fixture
def kafka(kafka_settings: KafkaSettings) -> KafkaSettings:
    """Outputs time out after 4 s (30 s by default) so the unknown topic shows soon."""
    extra = {**kafka_settings.client_config, "message.timeout.ms": "4000"}
    return kafka_settings.model_copy(update={"client_config": extra})


@pytest.fixture
def rendezvous(kafka: KafkaSettings, topics: Topics, tmp_path: Path) -> Iterator[StreamRunner]:
    (tmp_path / "t.yaml").write_text(POLICY)
    settings = RendezvousSettings(
        policies=tmp_path / "t.yaml", auto_offset_reset="earliest", ops_port=0, group_id=GROUP
    )
    runner, _ = build(settings, kafka)
    with running(runner):
        yield runner


def good(topics: Topics, name: str) -> RequestEnvelope:
    return request(name, request_id=name, endpoint="t", reply_topic=topics.replies)


def poison(name: str, topic: str, partition: int | None) -> RequestEnvelope:
    req = request(name, request_id=name, endpoint="t", deadline_in_ms=1000)
    address = ReturnAddress(topic=topic, partition=partition)
    return req.model_copy(update={"return_address": address})


def answered(kafka: KafkaSettings, topics: Topics, *reqs: RequestEnvelope) -> None:
    """Send each request and its champion's score."""
    records = [Outbound(topics.requests, message_key(r), encode(r)) for r in reqs]
    for r in reqs:
        score = score_for(r, model="champ", output="ok")
        records.append(Outbound(topics.scores, message_key(score), encode(score)))
    produce_all(kafka, records)


def test_undeliverable_return_addresses_are_dead_lettered_alone_and_the_rest_answered(
    kafka: KafkaSettings, topics: Topics, rendezvous: StreamRunner
) -> None:
    answered(kafka, topics, good(topics, "before"))
    [first] = read_exactly(kafka, topics.replies, 1)  # the replies topic's metadata is
    assert decode(first.value, Reply).request_id == "before"  # cached: partition 99 fails
    # in produce() itself, the path that stopped the process
    bad_partition = poison("bad-partition", topics.replies, 99)
    no_topic = poison("no-topic", f"{kafka.topic_prefix}no.such.topic", 0)
    answered(kafka, topics, bad_partition, no_topic)
    answered(kafka, topics, good(topics, "after-1"), good(topics, "after-2"))

    letters = [decode(r.value, DeadLetter) for r in read_exactly(kafka, topics.dead_letters, 2)]
    assert len(letters) == 2  # and no third one within the grace period
    assert sorted(d.key or "" for d in letters) == ["bad-partition", "no-topic"]
    assert {d.service for d in letters} == {"rendezvous"}
    assert all(d.origin_topic == topics.requests for d in letters)
    by_key = {d.key: d.error for d in letters}
    assert (
        "no partition 99" in by_key["bad-partition"]
        or "UNKNOWN_PARTITION" in by_key["bad-partition"]
    )
    assert "does not exist" in by_key["no-topic"]

    got = [decode(r.value, Reply).request_id for r in read_exactly(kafka, topics.replies, 3)]
    assert sorted(got) == ["after-1", "after-2", "before"]
    assert rendezvous.stats.dead_letters == 2

    rendezvous.stop()  # a clean stop commits: the poison records are behind the group
    until = time.monotonic() + 30
    while rendezvous.ready and time.monotonic() < until:
        time.sleep(0.05)  # the runner closes its consumer when its loop ends
    reader = Consumer(consumer_config(kafka, kafka.topic_prefix + GROUP, "test-offsets"))
    try:
        parts = topics.partitions("requests")
        committed = reader.committed(topics.requests, parts)
        ends = reader.end_offsets(topics.requests, parts)
    finally:
        reader.close()
    assert {p: max(o, 0) for p, o in committed.items()} == ends

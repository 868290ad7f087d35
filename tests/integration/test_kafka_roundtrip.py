"""The Kafka wrapper and the message contract against the real broker."""

from __future__ import annotations

import pytest

from services.common.codec import decode, encode, message_key
from services.common.errors import BackpressureError
from services.common.kafka import Admin, Outbound, Producer, admin_config, producer_config
from services.common.messages import RequestEnvelope, Score
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from tests.factories import request, score_for
from tests.integration.kafka_io import produce_all, read_exactly
from tests.murmur2 import java_partition


def test_request_round_trip(kafka_settings: KafkaSettings, topics: Topics) -> None:
    req = request({"text": "hello", "n": [1, 2, 3]})
    produce_all(kafka_settings, [Outbound(topics.requests, message_key(req), encode(req))])

    [rec] = read_exactly(kafka_settings, topics.requests, 1)

    assert rec.key == req.request_id.encode()
    assert decode(rec.value, RequestEnvelope) == req


def test_request_and_its_scores_share_a_partition(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    reqs = [request(i) for i in range(60)]
    scores = [score_for(r, model=m, output=r.payload) for r in reqs for m in ("a", "b")]
    produce_all(
        kafka_settings,
        [Outbound(topics.requests, message_key(r), encode(r)) for r in reqs]
        + [Outbound(topics.scores, message_key(s), encode(s)) for s in scores],
    )

    req_part = {
        decode(r.value, RequestEnvelope).request_id: r.partition
        for r in read_exactly(kafka_settings, topics.requests, len(reqs))
    }
    score_recs = read_exactly(kafka_settings, topics.scores, len(scores))

    parts = topics.partitions("requests")
    assert len(set(req_part.values())) > 1  # the keys really spread over partitions
    assert len(score_recs) == len(scores)
    for rec in score_recs:
        rid = decode(rec.value, Score).request_id
        assert rec.partition == req_part[rid]
        assert rec.partition == java_partition(rid.encode(), parts)  # as a Java client


def test_ensure_topics_is_idempotent(kafka_settings: KafkaSettings, topics: Topics) -> None:
    admin = Admin(admin_config(kafka_settings))

    assert topics.ensure(admin) == []
    live = admin.partitions()
    for role, name in topics.by_role.items():
        assert live[name] == topics.partitions(role)


def test_full_producer_queue_fails_fast(kafka_settings: KafkaSettings, topics: Topics) -> None:
    small = kafka_settings.model_copy(
        update={"client_config": {"queue.buffering.max.messages": "5"}}
    )
    producer = Producer(producer_config(small, "tiny-queue"))
    req = request("x")
    out = Outbound(topics.requests, message_key(req), encode(req))
    for _ in range(5):
        producer.produce(out)  # fills the queue: no poll serves deliveries meanwhile
    with pytest.raises(BackpressureError, match="queue full"):
        producer.produce(out)
    assert producer.flush(15) == 0

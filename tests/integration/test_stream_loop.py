"""The shared poll loop on the real broker: outputs, dead letters, offsets, stopping."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import uuid
from collections.abc import Sequence

from services.common.codec import decode, encode, message_key
from services.common.kafka import (
    Consumer,
    Outbound,
    Producer,
    consumer_config,
    producer_config,
)
from services.common.lifecycle import install_stop_signals
from services.common.loop import Context, Inbound, StreamRunner
from services.common.messages import DeadLetter, RequestEnvelope, Score
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from tests.factories import request, score_for
from tests.integration.kafka_io import committed_total, produce_all, read_exactly


class Echo:
    """Scores every request with its own payload; raises on the payload "boom"."""

    def __init__(self, scores_topic: str) -> None:
        self.scores_topic = scores_topic

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for item in batch:
            req: RequestEnvelope = item.message
            if req.payload == "boom":
                raise RuntimeError("model crashed on boom")
            score = score_for(req, output=req.payload)
            ctx.emit(
                Outbound(self.scores_topic, message_key(score), encode(score)), source=item.record
            )

    def tick(self, now_ms: float, ctx: Context) -> None:
        pass


def runner(
    settings: KafkaSettings, topics: Topics, group: str, batch_size: int = 64
) -> StreamRunner:
    return StreamRunner(
        service="echo-test",
        consumer=Consumer(
            consumer_config(settings, group, "echo-test", {"auto.offset.reset": "earliest"})
        ),
        producer=Producer(producer_config(settings, "echo-test")),
        decoders={topics.requests: lambda b: decode(b, RequestEnvelope)},
        processor=Echo(topics.scores),
        dead_letter_topic=topics.dead_letters,
        batch_size=batch_size,
    )


def outs(topic: str, reqs: list[RequestEnvelope]) -> list[Outbound]:
    return [Outbound(topic, message_key(r), encode(r)) for r in reqs]


def test_bad_records_go_to_dead_letters_and_the_loop_goes_on(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    good1, good2, boom = request("one"), request("two"), request("boom")
    future = json.loads(encode(request("v99")))
    future["v"] = 99
    bad = [b"\x00garbage", json.dumps(future).encode()]
    produce_all(
        kafka_settings,
        [
            *outs(topics.requests, [good1]),
            *(Outbound(topics.requests, f"bad-{i}".encode(), v) for i, v in enumerate(bad)),
            *outs(topics.requests, [boom, good2]),
        ],
    )
    group = f"g-{uuid.uuid4().hex}"

    stats = runner(kafka_settings, topics, group).run(max_records=5, idle_timeout_s=60)

    assert (stats.records, stats.dead_letters) == (5, 3)
    scores = read_exactly(kafka_settings, topics.scores, 2)
    assert sorted(decode(r.value, Score).output for r in scores) == ["one", "two"]
    letters = [
        decode(r.value, DeadLetter) for r in read_exactly(kafka_settings, topics.dead_letters, 3)
    ]
    by_value = {base64.b64decode(d.value_b64): d for d in letters}
    assert by_value[bad[0]].error_code == "bad_message"
    assert "99" in by_value[bad[1]].error
    assert by_value[encode(boom)].error_code == "RuntimeError"
    requests = {
        (r.partition, r.offset): r.value for r in read_exactly(kafka_settings, topics.requests, 5)
    }
    for letter in letters:
        assert letter.origin_topic == topics.requests
        assert requests[(letter.origin_partition, letter.origin_offset)] == base64.b64decode(
            letter.value_b64
        )
    assert committed_total(kafka_settings, topics, group) == 5


def test_a_second_member_resumes_where_the_first_committed(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    reqs = [request(i) for i in range(40)]
    produce_all(kafka_settings, outs(topics.requests, reqs))
    group = f"g-{uuid.uuid4().hex}"

    first = runner(kafka_settings, topics, group, batch_size=5).run(
        max_records=15, idle_timeout_s=60
    )
    second = runner(kafka_settings, topics, group).run(
        max_records=40 - first.records, idle_timeout_s=60
    )

    assert 15 <= first.records < 40
    assert first.records + second.records == 40  # nothing read twice, nothing skipped
    scores = read_exactly(kafka_settings, topics.scores, 40)
    assert sorted(decode(r.value, Score).output for r in scores) == list(range(40))
    assert committed_total(kafka_settings, topics, group) == 40


def test_sigterm_stops_the_loop_after_committing(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    group = f"g-{uuid.uuid4().hex}"
    loop = runner(kafka_settings, topics, group)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    install_stop_signals(loop.stop)

    def drive() -> None:
        produce_all(kafka_settings, outs(topics.requests, [request(i) for i in range(7)]))
        read_exactly(kafka_settings, topics.scores, 7)  # the loop has answered them all
        os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        stats = loop.run(idle_timeout_s=90)  # returns through SIGTERM, not the timeout
    finally:
        driver.join(60)
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])

    assert stats.records == 7
    assert committed_total(kafka_settings, topics, group) == 7

"""A broker outage while outputs are in flight, on a broker of the test's own: the loop
neither stops nor dead-letters anything; it produces the timed-out outputs again and
commits once the broker is back (issue 11: a 90 s outage is in the chaos schedule)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.common.codec import decode, encode, message_key
from services.common.kafka import (
    Admin,
    Consumer,
    Outbound,
    Producer,
    admin_config,
    consumer_config,
    producer_config,
)
from services.common.loop import Context, Inbound, StreamRunner
from services.common.messages import RequestEnvelope
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.devstack.broker import LocalBroker
from tests.conftest import free_port_pair
from tests.factories import request
from tests.integration.kafka_io import produce_all, read_exactly

pytestmark = pytest.mark.integration


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    until = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < until:  # type: ignore[operator]
        time.sleep(0.05)  # polling a condition, bounded
    assert condition(), f"timed out waiting for {what}"  # type: ignore[operator]


class HoldThenEmit:
    """Holds every request; once ``go`` is set, emits one output per held request."""

    def __init__(self, out_topic: str) -> None:
        self.out_topic = out_topic
        self.held: list[Inbound] = []
        self.go = threading.Event()

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for item in batch:
            with ctx.isolate(item.record):
                ctx.hold(item.record)
                self.held.append(item)

    def tick(self, now_ms: float, ctx: Context) -> None:
        if not self.go.is_set():
            return
        for item in self.held:
            ctx.emit(Outbound(self.out_topic, b"k", b"done"), source=item.record)
            ctx.release(item.record)
        self.held.clear()


def test_outputs_in_flight_during_an_outage_are_delivered_after_it(tmp_path: Path) -> None:
    broker = LocalBroker(port=free_port_pair(), state_dir=tmp_path / "broker")
    broker.start(timeout_s=180)
    try:
        kafka = KafkaSettings(bootstrap=broker.bootstrap, topic_prefix="o.")
        short = kafka.model_copy(update={"client_config": {"message.timeout.ms": "2000"}})
        topics = load_topics(prefix=kafka.topic_prefix)
        topics.ensure(Admin(admin_config(kafka)))
        proc = HoldThenEmit(topics.decisions)
        runner = StreamRunner(
            service="outage",
            consumer=Consumer(
                consumer_config(kafka, "o.group", "outage", {"auto.offset.reset": "earliest"})
            ),
            producer=Producer(producer_config(short, "outage")),  # times out soon
            decoders={topics.requests: lambda b: decode(b, RequestEnvelope)},
            processor=proc,
            dead_letter_topic=topics.dead_letters,
        )
        thread = threading.Thread(target=runner.run)
        thread.start()
        reqs = [request(i) for i in range(3)]
        produce_all(kafka, [Outbound(topics.requests, message_key(r), encode(r)) for r in reqs])
        wait_for(lambda: len(proc.held) == 3, 60, "the requests to be held")

        broker.stop()
        proc.go.set()  # the outputs go out while no broker answers
        wait_for(lambda: runner.stats.produced >= 6, 60, "a timed-out output produced again")
        assert thread.is_alive()
        assert runner.stats.dead_letters == 0

        broker.start(timeout_s=180)
        outputs = read_exactly(kafka, topics.decisions, 3, timeout_s=90)
        assert len(outputs) >= 3  # at least once: a rebalance after the outage re-reads
        reader = Consumer(consumer_config(kafka, "o.group", "check"))
        parts = topics.partitions("requests")
        try:
            ends = reader.end_offsets(topics.requests, parts)

            def caught_up() -> bool:
                committed = reader.committed(topics.requests, parts)
                return {p: max(o, 0) for p, o in committed.items()} == ends

            wait_for(caught_up, 90, "the group to commit past every request")
        finally:
            reader.close()
        assert thread.is_alive()
        runner.stop()
        thread.join(60)
        assert not thread.is_alive()
        assert runner.stats.dead_letters == 0
    finally:
        broker.stop()

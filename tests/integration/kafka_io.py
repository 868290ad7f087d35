"""Small helpers for integration tests: produce and read back with the real wrapper."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from services.common.kafka import (
    Consumer,
    Outbound,
    Producer,
    Record,
    consumer_config,
    producer_config,
)
from services.common.loop import StreamRunner
from services.common.settings import KafkaSettings
from services.common.topics import Topics


def produce_all(settings: KafkaSettings, records: list[Outbound]) -> None:
    producer = Producer(producer_config(settings, "test-producer"))
    errors: list[str] = []
    for out in records:
        producer.produce(out, on_delivery=lambda e: errors.append(e) if e else None)
    assert producer.flush(15) == 0
    assert errors == []


def read_exactly(
    settings: KafkaSettings, topic: str, count: int, timeout_s: float = 30.0
) -> list[Record]:
    """Read ``count`` records from the start of ``topic`` (fails if fewer arrive), then
    make sure no extra record follows within a short grace period."""
    consumer = Consumer(
        consumer_config(
            settings, f"reader-{uuid.uuid4().hex}", "test-reader", {"auto.offset.reset": "earliest"}
        )
    )
    consumer.subscribe([topic])
    out: list[Record] = []
    try:
        until = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < until:
            out.extend(consumer.consume(100, 0.2))
        assert len(out) >= count, f"{topic}: expected {count} records, got {len(out)}"
        out.extend(consumer.consume(100, 0.5))
    finally:
        consumer.close()
    return out


def read_all_after(settings: KafkaSettings, topic: str, wall_ms: float) -> list[Record]:
    """Every record of ``topic``, reading until the wall clock has passed ``wall_ms`` and
    then until the end of the topic: for checking that nothing more was written."""
    consumer = Consumer(
        consumer_config(
            settings, f"reader-{uuid.uuid4().hex}", "test-reader", {"auto.offset.reset": "earliest"}
        )
    )
    consumer.subscribe([topic])
    out: list[Record] = []
    try:
        while time.time() * 1000 < wall_ms or not consumer.assignment:
            out.extend(consumer.consume(100, 0.2))
        while batch := consumer.consume(100, 0.5):
            out.extend(batch)
    finally:
        consumer.close()
    return out


@contextmanager
def running(runner: StreamRunner) -> Iterator[StreamRunner]:
    """``runner`` in a thread until the block ends, once its group gave it partitions."""
    thread = threading.Thread(target=runner.run, kwargs={"idle_timeout_s": 120})
    thread.start()
    until = time.monotonic() + 60
    while not runner.ready and time.monotonic() < until:
        time.sleep(0.05)  # polling the group join, which has no event to wait on
    assert runner.ready, "the runner got no partitions within 60 s"
    try:
        yield runner
    finally:
        runner.stop()
        thread.join(30)
    assert not thread.is_alive()


def committed_total(settings: KafkaSettings, topics: Topics, group: str) -> int:
    """The sum of ``group``'s committed offsets over the requests topic's partitions."""
    probe = Consumer(consumer_config(settings, group, "probe"))
    try:
        offsets = probe.committed(topics.requests, topics.partitions("requests"))
    finally:
        probe.close()
    return sum(max(o, 0) for o in offsets.values())

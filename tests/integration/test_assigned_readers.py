"""Readers that assign their partitions themselves (the control follower, the gateway's
reply reader) against the real broker: an idle one sends about one fetch a second, and
a record still reaches it at once (the broker answers a held fetch when a record comes)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

from services.common.codec import encode, message_key
from services.common.kafka import ASSIGNED_READER_WAIT_MS, Outbound, Producer, producer_config
from services.common.kafka.stats import REQUEST_COUNTS
from services.common.messages import Reply
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.control.follower import ControlFollower
from services.gateway import kafka_bus
from tests.factories import registration

STATS = {"statistics.interval.ms": "200"}
IDLE_S = 4.0
RECORDS = 6


def _with_stats(settings: KafkaSettings) -> KafkaSettings:
    return settings.model_copy(update={"client_config": {**settings.client_config, **STATS}})


def _new_clients(prefix: str, before: set[str]) -> dict[str, dict[str, int]]:
    """Request counts of the consumers ``prefix#consumer-...`` not there ``before``."""
    counts = REQUEST_COUNTS.snapshot()
    return {
        n: c for n, c in counts.items() if n.startswith(prefix + "#consumer") and n not in before
    }


def _fetches(prefix: str, before: set[str]) -> int:
    """Fetches of the one new consumer named ``prefix#consumer-...``."""
    ((_, counts),) = _new_clients(prefix, before).items()
    return counts.get("Fetch", 0)


def _idle_fetch_rate(prefix: str, before: set[str]) -> float:
    """Fetches per second over IDLE_S seconds of an idle reader (the first report of the
    client is waited for; the figures lag by one statistics interval at both ends)."""
    until = time.monotonic() + 10
    while not _new_clients(prefix, before):
        assert time.monotonic() < until, f"no statistics report from {prefix}"
        time.sleep(0.05)
    first = _fetches(prefix, before)
    time.sleep(IDLE_S)  # the measured window, not a wait for a condition
    return (_fetches(prefix, before) - first) / IDLE_S


def _arrival_delays(
    settings: KafkaSettings, record: Callable[[int], Outbound], seen: Callable[[], int]
) -> list[float]:
    """Seconds from the send of each record (one producer, warmed by a first record) to
    the reader having it, for RECORDS records sent at spread phases of its fetch wait."""
    producer = Producer(producer_config(settings, "test-producer"))
    delays: list[float] = []
    for i in range(-1, RECORDS):  # record -1 only warms the producer up
        time.sleep(ASSIGNED_READER_WAIT_MS / 1000.0 * (i + 2) / (RECORDS + 2))  # the phase
        had = seen()
        sent = time.monotonic()
        producer.produce(record(i), on_delivery=lambda error: None)
        producer.poll(0)
        until = sent + 10
        while seen() == had:
            assert time.monotonic() < until, "the reader did not get the record"
            time.sleep(0.002)
        if i >= 0:
            delays.append(time.monotonic() - sent)
    assert producer.flush(15) == 0
    return delays


def test_an_idle_control_follower_fetches_about_once_a_second_and_gets_records_at_once(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    settings = _with_stats(kafka_settings)
    before = set(REQUEST_COUNTS.snapshot())
    follower = ControlFollower(settings, topics, on_change=lambda *_: None).start()
    try:
        rate = _idle_fetch_rate("rdv-control-follower", before)

        def record(i: int) -> Outbound:
            reg = registration(f"m{i}")
            return Outbound(topics.control, message_key(reg), encode(reg))

        delays = _arrival_delays(settings, record, lambda: follower.applied)
    finally:
        follower.stop()
    # the 100 ms bound of a group member would give about 10 a second
    assert rate <= 1000.0 / ASSIGNED_READER_WAIT_MS + 1.5, rate
    # a record waiting for the bound would take half of it on average
    assert statistics.median(delays) < ASSIGNED_READER_WAIT_MS / 1000.0 / 4, delays


def test_an_idle_gateway_reply_reader_fetches_about_once_a_second_and_gets_replies_at_once(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    settings = _with_stats(kafka_settings)
    before = set(REQUEST_COUNTS.snapshot())
    bus = kafka_bus.connect(settings, topics, partition=0)
    got: list[bytes | None] = []
    lock = threading.Lock()

    def sink(value: bytes | None) -> None:
        with lock:
            got.append(value)

    bus.start(sink)
    try:
        assert bus.wait_ready(30)
        rate = _idle_fetch_rate("rdv-gateway-p0", before)

        def record(i: int) -> Outbound:
            reply = Reply(request_id=f"r{i}", model="m", reason="test", decided_ms=1.0)
            return Outbound(topics.replies, message_key(reply), encode(reply), partition=0)

        def seen() -> int:
            with lock:
                return len(got)

        delays = _arrival_delays(settings, record, seen)
    finally:
        bus.close(5.0)
    assert rate <= 1000.0 / ASSIGNED_READER_WAIT_MS + 1.5, rate
    assert statistics.median(delays) < ASSIGNED_READER_WAIT_MS / 1000.0 / 4, delays

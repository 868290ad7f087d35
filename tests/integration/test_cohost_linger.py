"""A co-hosted set's producer on the real broker: the scores a loop turn queues for one
request (a few dozen microseconds apart, as the loop's bookkeeping spaces them) leave in
one produce request (sent at once, the first of them often leaves alone), and as soon
as the set's last one is queued, without waiting out the linger."""

from __future__ import annotations

import statistics
import time
import uuid

from services.common.kafka import Outbound, Producer, producer_config
from services.common.kafka.stats import REQUEST_COUNTS
from services.common.settings import KafkaSettings
from services.common.spec import load_spec
from services.common.topics import Topics
from services.workers.service import client_overrides
from services.workers.settings import WorkerSettings

REQUESTS = 40
GAP_S = 20e-6  # between the scores of one request: the loop's work per output


def _produce_requests(producer: Producer, name: str) -> int:
    """The producer's Produce requests once three statistics reports agree."""
    until, last, same = time.monotonic() + 15, -1, 0
    while same < 3:
        assert time.monotonic() < until, "the producer's statistics did not settle"
        producer.poll(0.2)  # serves the statistics callback, every 200 ms
        counts = [c for n, c in REQUEST_COUNTS.snapshot().items() if n.startswith(name + "#")]
        now = counts[0].get("Produce", 0) if counts else 0
        same, last = (same + 1 if now == last else 0), now
    return last


def _send_sets(producer: Producer, topics: Topics) -> list[float]:
    """REQUESTS sets of three scores, one set at a time; ms from each set's first
    produce call to its last acknowledgement."""
    took: list[float] = []
    for r in range(REQUESTS):
        started = time.perf_counter()
        acked: list[str | None] = []
        for model in "abc":
            out = Outbound(topics.scores, b"req-%d" % r, model.encode())
            producer.produce(out, acked.append)
            end = time.perf_counter() + GAP_S
            while time.perf_counter() < end:  # the loop's own work between two outputs
                pass
        until = time.monotonic() + 15
        while len(acked) < 3:
            assert time.monotonic() < until, "scores not acknowledged"
            producer.poll(0.0005)
        took.append((time.perf_counter() - started) * 1000.0)
        assert acked == [None, None, None]
    return took


def _set_producer(kafka_settings: KafkaSettings, name: str, linger_ms: float) -> Producer:
    specs = [load_spec(f"echo:name={n},role=champion,endpoints=demo") for n in "abc"]
    _, writing = client_overrides(specs, WorkerSettings(cohost_linger_ms=linger_ms))
    stats = {"statistics.interval.ms": "200"}
    return Producer(producer_config(kafka_settings, name) | stats | writing)


def test_a_co_hosted_set_s_scores_of_a_request_share_one_produce_request(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    name = f"cohost-{uuid.uuid4().hex[:8]}"
    producer = _set_producer(kafka_settings, name, WorkerSettings().cohost_linger_ms)
    _send_sets(producer, topics)
    # sent one by one (cohost_linger_ms 0), a set often takes two or three requests
    assert _produce_requests(producer, name) <= REQUESTS * 1.1


def test_a_full_set_leaves_without_waiting_out_the_linger(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    producer = _set_producer(kafka_settings, f"cohost-{uuid.uuid4().hex[:8]}", 100.0)
    took = _send_sets(producer, topics)
    assert statistics.median(took) < 40.0, took  # not the 100 ms linger

"""A co-hosted set's producer on the real broker: with the set's linger, the scores a
loop turn queues for one request (a few dozen microseconds apart, as the loop's
bookkeeping spaces them) leave in one produce request; sent at once, the first of them
often leaves alone."""

from __future__ import annotations

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


def test_a_co_hosted_set_s_scores_of_a_request_share_one_produce_request(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    specs = [load_spec(f"echo:name={n},role=champion,endpoints=demo") for n in "abc"]
    _, writing = client_overrides(specs, WorkerSettings())
    name = f"cohost-{uuid.uuid4().hex[:8]}"
    producer = Producer(
        producer_config(kafka_settings, name) | {"statistics.interval.ms": "200"} | writing
    )
    for r in range(REQUESTS):
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
            producer.poll(0.001)
        assert acked == [None, None, None]
    # at once (linger 0) the same loop sent about 1.8 requests per request's scores
    assert _produce_requests(producer, name) <= REQUESTS * 1.1

"""Producers chosen by topic: records off the answer path (the rendezvous's decisions)
go through a producer of their own that waits to fill a batch, while replies leave at
once through the main one."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from services.common.kafka.clients import Outbound, Producer


class Lanes:
    """The loop's producer interface over a main producer and one producer per listed
    topic. librdkafka sends one produce request per partition and, with ``linger.ms``
    0, one as soon as a record is queued; a lane with a linger gathers that topic's
    records into fewer requests without delaying the main producer's."""

    def __init__(self, main: Producer, by_topic: Mapping[str, Producer]) -> None:
        self._main = main
        self._by_topic = dict(by_topic)
        self._lanes = list({id(p): p for p in self._by_topic.values()}.values())

    def produce(
        self, out: Outbound, on_delivery: Callable[[str | None], None] | None = None
    ) -> None:
        self._for(out.topic).produce(out, on_delivery)

    def missing(self, topic: str, partition: int | None, timeout_s: float) -> str | None:
        return self._for(topic).missing(topic, partition, timeout_s)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve every producer's delivery reports; waits (up to ``timeout_s``) on the
        main one only when the lanes had none."""
        served = sum(lane.poll(0.0) for lane in self._lanes)
        return served + self._main.poll(0.0 if served else timeout_s)

    def flush(self, timeout_s: float) -> int:
        """Flush every producer within ``timeout_s`` in all; returns the records still
        queued."""
        end = time.monotonic() + timeout_s
        left = 0
        for producer in (*self._lanes, self._main):
            left += producer.flush(max(end - time.monotonic(), 0.0))
        return left

    def flush_lanes(self, timeout_s: float) -> int:
        """Send what the lanes hold now (their linger not waited out); returns the
        records still queued."""
        end = time.monotonic() + timeout_s
        return sum(lane.flush(max(end - time.monotonic(), 0.0)) for lane in self._lanes)

    def __len__(self) -> int:
        return len(self._main) + sum(len(lane) for lane in self._lanes)

    def _for(self, topic: str) -> Producer:
        return self._by_topic.get(topic, self._main)

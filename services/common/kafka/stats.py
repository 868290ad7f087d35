"""librdkafka's statistics as Prometheus metrics, in every process:

- ``rdv_kafka_requests_total{client, request}``: the Kafka requests each client of
  this process sent, the work the process gives the broker (``request``: Produce,
  Fetch, OffsetCommit, Metadata, ...);
- ``rdv_kafka_consumer_lag{group, topic, partition}``: per partition a group consumer
  of this process owns now, the records its group has not committed yet.

librdkafka reports every ``statistics.interval.ms`` from the client's poll; the figures
show the last report, so they lag by up to one interval.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge
from prometheus_client.core import REGISTRY, CounterMetricFamily, Metric
from prometheus_client.registry import Collector

CONSUMER_LAG = Gauge(
    "rdv_kafka_consumer_lag",
    "Records of a partition this process's group consumer owns that the group has not "
    "committed yet: the partition's end (high watermark; last stable offset under "
    "read_committed) minus the group's committed offset, librdkafka's consumer_lag, as of "
    "the last statistics report (every statistics.interval.ms). Only partitions assigned "
    "now: a revoked partition's series is removed at the next report, a closed consumer's "
    "once it missed three reports; no series while the group has no committed offset",
    ["group", "topic", "partition"],
)

NOT_OWNED = frozenset({"none", "stopping", "stopped"})
"""librdkafka fetch states of a partition the consumer does not (or no longer) fetch:
the others (offset-query, offset-wait, validate-epoch-wait, active) are assigned ones."""

STALE_REPORTS = 3
"""A consumer silent for this many statistics intervals is gone (closed): its series go."""


def request_totals(stats: Mapping[str, Any]) -> dict[str, int]:
    """Request type -> count, summed over the client's broker connections."""
    out: dict[str, int] = {}
    for broker in (stats.get("brokers") or {}).values():
        for name, count in (broker.get("req") or {}).items():
            if count:
                out[name] = out.get(name, 0) + int(count)
    return out


def partition_lags(stats: Mapping[str, Any]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> records not committed, for the partitions a consumer's report
    shows as assigned (fetched). librdkafka's ``consumer_lag`` is -1 where it cannot tell:
    no committed offset or no known end (left out), or a committed offset past the end it
    last saw (nothing is behind: 0). Empty for a producer's report."""
    if stats.get("type") != "consumer":
        return {}
    out: dict[tuple[str, int], int] = {}
    for topic, entry in (stats.get("topics") or {}).items():
        for part in (entry.get("partitions") or {}).values():
            partition = int(part.get("partition", -1))
            if partition < 0 or part.get("fetch_state", "none") in NOT_OWNED:
                continue  # -1 is librdkafka's internal unassigned partition
            lag = int(part.get("consumer_lag", -1))
            if lag < 0:
                known = int(part.get("committed_offset", -1)) >= 0
                if not (known and int(part.get("hi_offset", -1)) >= 0):
                    continue
                lag = 0
            out[(str(topic), partition)] = lag
    return out


class RequestCounts(Collector):
    """The last statistics report of each client, as one Prometheus counter family."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_client: dict[str, dict[str, int]] = {}

    def on_stats(self, raw: str) -> None:
        """librdkafka's ``stats_cb``: keep the report's totals under the client's name
        (``<client.id>#<producer|consumer>-<n>``, unique in the process)."""
        if (stats := parse_report(raw)) is not None:
            self.record(stats)

    def record(self, stats: Mapping[str, Any]) -> None:
        """Keep a parsed report's totals (see ``on_stats``)."""
        totals = request_totals(stats)
        with self._lock:
            self._by_client[str(stats["name"])] = totals

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(totals) for name, totals in self._by_client.items()}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "rdv_kafka_requests",
            "Kafka requests this process's clients sent, by client and request type "
            "(librdkafka statistics; lags by up to statistics.interval.ms)",
            labels=["client", "request"],
        )
        for client, totals in sorted(self.snapshot().items()):
            for request, count in sorted(totals.items()):
                family.add_metric([client, request], count)
        yield family


def parse_report(raw: str) -> dict[str, Any] | None:
    """A statistics report as a dict with a ``name``, or None when it is unreadable (a
    report we cannot read changes no figure)."""
    try:
        stats = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(stats, dict) or not isinstance(stats.get("name"), str):
        return None
    return stats


LagKey = tuple[str, str, str]  # group, topic, partition: the gauge's labels


@dataclass(frozen=True)
class _Reported:
    """What one consumer's last report published."""

    keys: frozenset[LagKey]
    at: float  # monotonic seconds
    stale_after_s: float


class ConsumerLags:
    """Publishes each group consumer's per-partition lag on ``gauge``. A series belongs
    to the client that set it last (after a rebalance between two consumers of one
    process, the old owner's next report does not remove the new owner's series); a
    partition a client stops reporting as assigned loses its series at that report,
    and a client silent for ``stale_after_s`` (closed) loses all of its own."""

    def __init__(self, gauge: Gauge = CONSUMER_LAG, clock: Callable[[], float] = time.monotonic):
        self._gauge = gauge
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Reported] = {}
        self._owner: dict[LagKey, str] = {}

    def record(self, group: str, stats: Mapping[str, Any], stale_after_s: float) -> None:
        """Publish one parsed report of the consumer of ``group`` named ``stats["name"]``."""
        name = str(stats["name"])
        lags = {(group, topic, str(p)): lag for (topic, p), lag in partition_lags(stats).items()}
        now = self._clock()
        with self._lock:
            self._sweep(now)
            if (before := self._clients.get(name)) is not None:
                for key in before.keys - lags.keys():
                    self._drop(key, name)
            for key, lag in lags.items():
                self._gauge.labels(*key).set(lag)
                self._owner[key] = name
            self._clients[name] = _Reported(frozenset(lags), now, stale_after_s)

    def published(self) -> dict[LagKey, str]:
        """Series -> the client that owns it (for tests and debugging)."""
        with self._lock:
            return dict(self._owner)

    def sweep(self) -> None:
        """Remove the series of the clients that stopped reporting (closed)."""
        with self._lock:
            self._sweep(self._clock())

    def _sweep(self, now: float) -> None:
        for name, seen in list(self._clients.items()):
            if now - seen.at > seen.stale_after_s:
                for key in seen.keys:
                    self._drop(key, name)
                del self._clients[name]

    def _drop(self, key: LagKey, name: str) -> None:
        if self._owner.get(key) == name:
            del self._owner[key]
            self._gauge.remove(*key)


REQUEST_COUNTS = RequestCounts()
CONSUMER_LAGS = ConsumerLags()
_registered = False
_register_lock = threading.Lock()


def stats_callback(config: Mapping[str, str]) -> dict[str, Callable[[str], None]]:
    """``{"stats_cb": ...}`` for a client whose config asks for statistics, registering
    the request counter with Prometheus on first use; ``{}`` when statistics are off. A
    consumer with a ``group.id`` also publishes its lag under that group; any other
    client's report retires the lag of consumers that stopped reporting."""
    interval_ms = int(config.get("statistics.interval.ms", "0") or 0)
    if interval_ms <= 0:
        return {}
    global _registered  # noqa: PLW0603 - one collector per process, registered once
    with _register_lock:
        if not _registered:
            REGISTRY.register(REQUEST_COUNTS)
            _registered = True
    group = config.get("group.id")
    stale_after_s = STALE_REPORTS * interval_ms / 1000.0

    def on_stats(raw: str) -> None:
        if (stats := parse_report(raw)) is None:
            return
        REQUEST_COUNTS.record(stats)
        if group:
            CONSUMER_LAGS.record(group, stats, stale_after_s)
        else:  # a producer: still retire the series of consumers that closed
            CONSUMER_LAGS.sweep()

    return {"stats_cb": on_stats}

"""The Kafka requests each client of this process sent, from librdkafka's statistics:
the Prometheus counter ``rdv_kafka_requests_total{client, request}``, the work the
process gives the broker (``request``: Produce, Fetch, OffsetCommit, Metadata, ...).

librdkafka reports cumulative counts every ``statistics.interval.ms`` from the client's
poll; the counter shows the last report, so it lags by up to one interval.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import REGISTRY, CounterMetricFamily, Metric
from prometheus_client.registry import Collector


def request_totals(stats: Mapping[str, Any]) -> dict[str, int]:
    """Request type -> count, summed over the client's broker connections."""
    out: dict[str, int] = {}
    for broker in (stats.get("brokers") or {}).values():
        for name, count in (broker.get("req") or {}).items():
            if count:
                out[name] = out.get(name, 0) + int(count)
    return out


class RequestCounts(Collector):
    """The last statistics report of each client, as one Prometheus counter family."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_client: dict[str, dict[str, int]] = {}

    def on_stats(self, raw: str) -> None:
        """librdkafka's ``stats_cb``: keep the report's totals under the client's name
        (``<client.id>#<producer|consumer>-<n>``, unique in the process)."""
        try:
            stats = json.loads(raw)
            name = str(stats["name"])
        except (ValueError, KeyError, TypeError):
            return  # a report we cannot read changes no figure
        totals = request_totals(stats)
        with self._lock:
            self._by_client[name] = totals

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


REQUEST_COUNTS = RequestCounts()
_registered = False
_register_lock = threading.Lock()


def stats_callback(config: Mapping[str, str]) -> dict[str, Callable[[str], None]]:
    """``{"stats_cb": ...}`` for a client whose config asks for statistics, registering
    the counter with Prometheus on first use; ``{}`` when statistics are off."""
    if int(config.get("statistics.interval.ms", "0") or 0) <= 0:
        return {}
    global _registered  # noqa: PLW0603 - one collector per process, registered once
    with _register_lock:
        if not _registered:
            REGISTRY.register(REQUEST_COUNTS)
            _registered = True
    return {"stats_cb": REQUEST_COUNTS.on_stats}

"""What the gateway needs from the streams, as an interface (``Bus``), and the broker
health that the Kafka clients' error hooks report to."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from services.common.kafka import Outbound

log = logging.getLogger("rdv.gateway.bus")

ReplySink = Callable[[bytes | None], None]
"""Takes the value of each record read from this instance's reply partition."""

DeliveryReport = Callable[[str | None], None]
"""Called with None once the broker acknowledged a record, else with the error."""


class Bus(Protocol):
    """The stream side of the gateway: Kafka in production, a fake in unit tests."""

    def start(self, on_reply: ReplySink) -> None:
        """Begin reading the reply partition in the background; returns at once."""

    def ready(self) -> bool:
        """True while replies can be received and requests can be produced."""

    def produce(self, out: Outbound, on_delivery: DeliveryReport) -> None:
        """Queue a record without blocking; raises BackpressureError when full."""

    def close(self, flush_timeout_s: float) -> None:
        """Stop reading, wait up to flush_timeout_s for queued records, release clients."""


class BrokerHealth:
    """Whether the Kafka clients currently see every broker down (thread-safe)."""

    def __init__(self) -> None:
        self._down = threading.Event()

    @property
    def down(self) -> bool:
        return self._down.is_set()

    def on_error(self, name: str, all_brokers_down: bool) -> None:
        """The clients' error hook."""
        if all_brokers_down and not self._down.is_set():
            self._down.set()
            log.warning("all Kafka brokers are down", extra={"code": name})

    def up(self) -> None:
        """A broker answered (a fetch, an acknowledgement, a metadata probe)."""
        if self._down.is_set():
            self._down.clear()
            log.info("Kafka brokers reachable again")

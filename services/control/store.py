"""Reading and writing the control topic (and the topic as a Ledger of changes)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.common.codec import decode_control, encode
from services.common.errors import DeliveryError, MessageError
from services.common.kafka import Outbound, Producer, consumer_config, producer_config, read_since
from services.common.messages import ControlEntry
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from services.control.state import ControlState

log = logging.getLogger("rdv.control")


def read_state(kafka: KafkaSettings, topics: Topics, timeout_s: float = 15.0) -> ControlState:
    """The control topic from its start to its current end, folded."""
    state = ControlState()
    records = read_since(
        consumer_config(kafka, "unused", "rdv-control-reader"),
        topics.control,
        range(topics.partitions("control")),
        0,
        timeout_s,
    )
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            state.apply(rec.key, decode_control(rec.value))
        except MessageError as exc:
            log.warning(
                "unreadable control record", extra={"offset": rec.offset, "error": str(exc)}
            )
    return state


def publish(
    kafka: KafkaSettings,
    topics: Topics,
    entries: Sequence[tuple[bytes, ControlEntry | None]],
    timeout_s: float = 15.0,
) -> None:
    """Write entries (None: a tombstone) and return once the broker has all of them."""
    producer = Producer(producer_config(kafka, "rdv-control"))
    errors: list[str] = []
    for key, entry in entries:
        value = b"" if entry is None else encode(entry)
        producer.produce(
            Outbound(topics.control, key, value), lambda err: errors.append(err) if err else None
        )
    left = producer.flush(timeout_s)
    if left or errors:
        raise DeliveryError(f"control change not written: {left} pending, errors {errors[:3]}")


class KafkaLedger:
    """The control topic as a ``services.control.changes.Ledger``."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, timeout_s: float = 15.0) -> None:
        self.kafka = kafka
        self.topics = topics
        self.timeout_s = timeout_s

    def read(self) -> ControlState:
        return read_state(self.kafka, self.topics, self.timeout_s)

    def publish(self, entries: Sequence[tuple[bytes, ControlEntry | None]]) -> None:
        publish(self.kafka, self.topics, entries, self.timeout_s)

"""The one module that owns ``confluent_kafka``; nothing else imports it.

Client configuration is merged in one fixed order (see ``merge_config``):

1. the platform's defaults for the client's role (low latency on the request path),
2. the security settings from ``KafkaSettings``,
3. the user's extra ``client_config``,
4. the pinned properties, which nobody may change: idempotent producers with
   ``acks=all`` and the Java-compatible murmur2 partitioner (so a request and its
   scores land on the same partition number), and consumers that store offsets only
   when told to (after their output was produced).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from services.common.errors import (
    BackpressureError,
    ConfigError,
    KafkaUnavailableError,
)
from services.common.settings import KafkaSettings

log = logging.getLogger("rdv.kafka")

PRODUCER_DEFAULTS: dict[str, str] = {
    "linger.ms": "0",  # send at once; batches still form while requests are in flight
    "socket.nagle.disable": "true",
    "queue.buffering.max.messages": "20000",  # bounded: a full queue fails fast
    "queue.buffering.max.kbytes": "65536",
    "message.timeout.ms": "30000",
}
PRODUCER_PINNED: dict[str, str] = {
    "enable.idempotence": "true",
    "acks": "all",
    "partitioner": "murmur2_random",  # Java client's default: murmur2 of the key
}
CONSUMER_DEFAULTS: dict[str, str] = {
    "auto.offset.reset": "latest",
    "session.timeout.ms": "6000",  # librdkafka's default is 45 s: far too slow to fail over
    "heartbeat.interval.ms": "1500",
    "max.poll.interval.ms": "60000",
    # The broker answers a fetch as soon as a record arrives (fetch.min.bytes=1), so
    # this long-poll bound adds no latency; a small one only multiplies empty fetches
    # (5 ms measured ~1 broker core of empty polls at 400 req/s on 2 cores).
    "fetch.wait.max.ms": "100",
    "fetch.min.bytes": "1",
    "socket.nagle.disable": "true",
    "enable.auto.commit": "true",  # commits only offsets stored with store_offsets()
    "auto.commit.interval.ms": "1000",
    "queued.max.messages.kbytes": "16384",
    # range gives one member the same partition numbers of co-partitioned topics.
    "partition.assignment.strategy": "range",
}
CONSUMER_PINNED: dict[str, str] = {"enable.auto.offset.store": "false"}


PERMANENT_DELIVERY_ERRORS = frozenset(
    {
        "_UNKNOWN_PARTITION",
        "_UNKNOWN_TOPIC",
        "UNKNOWN_TOPIC_OR_PART",
        "_MSG_SIZE_TOO_LARGE",
        "MSG_SIZE_TOO_LARGE",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_RECORD",
        "_INVALID_ARG",
        "TOPIC_AUTHORIZATION_FAILED",
        "INVALID_TOPIC_EXCEPTION",
    }
)
"""Delivery errors that no retry can fix (where the record goes, or what it is)."""


def is_permanent(delivery_error: str) -> bool:
    """Whether a delivery report's error (``"NAME: text"``) is one of those."""
    return delivery_error.split(":", 1)[0].strip() in PERMANENT_DELIVERY_ERRORS


def merge_config(*layers: Mapping[str, str], pinned: Mapping[str, str]) -> dict[str, str]:
    """Merge layers left to right, then the pinned properties (which must not conflict)."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update({k: str(v) for k, v in layer.items()})
    for key, value in pinned.items():
        if key in merged and merged[key] != value:
            raise ConfigError(
                f"Kafka property {key}={merged[key]!r} is not allowed: the platform pins "
                f"{key}={value!r} (delivery and co-partitioning depend on it)"
            )
        merged[key] = value
    return merged


def producer_config(settings: KafkaSettings, client_id: str) -> dict[str, str]:
    base = {"bootstrap.servers": settings.bootstrap, "client.id": client_id}
    return merge_config(
        PRODUCER_DEFAULTS,
        base,
        settings.security_config(),
        settings.client_config,
        pinned=PRODUCER_PINNED,
    )


def consumer_config(
    settings: KafkaSettings,
    group_id: str,
    client_id: str,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    base = {"bootstrap.servers": settings.bootstrap, "client.id": client_id, "group.id": group_id}
    return merge_config(
        CONSUMER_DEFAULTS,
        base,
        settings.security_config(),
        settings.client_config,
        overrides or {},
        pinned=CONSUMER_PINNED,
    )


def admin_config(settings: KafkaSettings) -> dict[str, str]:
    return merge_config(
        {"bootstrap.servers": settings.bootstrap},
        settings.security_config(),
        settings.client_config,
        pinned={},
    )


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record, detached from the client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0


@dataclass(frozen=True)
class Outbound:
    """A record to produce."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    partition: int | None = None  # None: murmur2 of the key picks it


ErrorHook = Callable[[str, bool], None]
"""Called with (error name, all brokers down?) on client-level errors."""


def _error_cb(hook: ErrorHook | None) -> Callable[[confluent_kafka.KafkaError], None]:
    def on_error(err: confluent_kafka.KafkaError) -> None:
        log.warning("kafka client error", extra={"code": err.name(), "error": err.str()})
        if hook is not None:
            hook(err.name(), err.code() == confluent_kafka.KafkaError._ALL_BROKERS_DOWN)

    return on_error


def _on_client_error(err: confluent_kafka.KafkaError) -> None:
    _error_cb(None)(err)


class Producer:
    """An idempotent producer whose local queue is bounded and fails fast when full."""

    def __init__(self, config: Mapping[str, str], on_error: ErrorHook | None = None) -> None:
        self._producer = confluent_kafka.Producer({**config, "error_cb": _error_cb(on_error)})

    def produce(
        self, out: Outbound, on_delivery: Callable[[str | None], None] | None = None
    ) -> None:
        """Queue ``out``; ``on_delivery(error or None)`` runs from a later poll/flush."""

        def report(err: confluent_kafka.KafkaError | None, _msg: object) -> None:
            if on_delivery is not None:
                on_delivery(None if err is None else f"{err.name()}: {err.str()}")

        try:
            if out.partition is None:
                self._producer.produce(
                    out.topic,
                    key=out.key,
                    value=out.value,
                    headers=list(out.headers) or None,
                    on_delivery=report,
                )
            else:
                self._producer.produce(
                    out.topic,
                    key=out.key,
                    value=out.value,
                    partition=out.partition,
                    headers=list(out.headers) or None,
                    on_delivery=report,
                )
        except BufferError as exc:
            raise BackpressureError(
                f"producer queue full ({len(self._producer)} records waiting)"
            ) from exc

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        return int(self._producer.poll(timeout_s))

    def flush(self, timeout_s: float) -> int:
        """Wait up to timeout_s for queued records; returns how many are still queued."""
        return int(self._producer.flush(timeout_s))

    def __len__(self) -> int:
        return len(self._producer)


def _record(msg: confluent_kafka.Message) -> Record:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a consumed record without topic, partition or offset")
    raw = msg.headers() or ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = tuple((k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in pairs)
    return Record(topic, partition, offset, msg.key(), msg.value(), headers, msg.timestamp()[1])


class Consumer:
    """A group consumer that commits only offsets stored after output was produced."""

    def __init__(self, config: Mapping[str, str], on_error: ErrorHook | None = None) -> None:
        self._consumer = confluent_kafka.Consumer({**config, "error_cb": _error_cb(on_error)})
        self._assigned: set[tuple[str, int]] = set()
        self._fresh: set[tuple[str, int]] = set()

    def subscribe(self, topics: Iterable[str]) -> None:
        def on_assign(_c: object, parts: list[confluent_kafka.TopicPartition]) -> None:
            self._assigned.update((p.topic, p.partition) for p in parts)
            self._fresh.update((p.topic, p.partition) for p in parts)

        def on_revoke(_c: object, parts: list[confluent_kafka.TopicPartition]) -> None:
            self._assigned.difference_update((p.topic, p.partition) for p in parts)

        self._consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=on_revoke)

    def assign_at_end(self, topic: str, partition: int, timeout_s: float = 10.0) -> int:
        """Read one partition without a group, from its current end (records produced
        from now on); returns that offset. Positioned when this returns."""
        tp = confluent_kafka.TopicPartition(topic, partition)
        _, end = self._consumer.get_watermark_offsets(tp, timeout=timeout_s)
        self._consumer.assign([confluent_kafka.TopicPartition(topic, partition, end)])
        self._assigned = {(topic, partition)}
        return int(end)

    def lag(self, timeout_s: float = 1.0) -> dict[tuple[str, int], int]:
        """(topic, partition) -> records not yet read, for the partitions owned now.
        Where nothing was read yet since the assignment, the group's committed offset
        stands in for the position."""
        parts = [confluent_kafka.TopicPartition(t, p) for t, p in self._assigned]
        if not parts:
            return {}
        known = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(parts)}
        unknown = [tp for tp in parts if known.get((tp.topic, tp.partition), -1) < 0]
        if unknown:
            try:
                for tp in self._consumer.committed(unknown, timeout=timeout_s):
                    known[(tp.topic, tp.partition)] = tp.offset
            except confluent_kafka.KafkaException as exc:  # a gauge is not worth a crash
                log.debug("committed offsets unavailable", extra={"error": str(exc)})
        out: dict[tuple[str, int], int] = {}
        for (topic, part), offset in known.items():
            tp = confluent_kafka.TopicPartition(topic, part)
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if offset >= 0 and high >= 0:
                out[(topic, part)] = max(high - offset, 0)
        return out

    def take_fresh_assignments(self) -> frozenset[tuple[str, int]]:
        """Partitions assigned since the last call (a processor may need to catch up on
        them before it handles their records)."""
        fresh, self._fresh = frozenset(self._fresh), set()
        return fresh

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """(topic, partition) pairs this member owns now."""
        return frozenset(self._assigned)

    def consume(self, max_records: int, timeout_s: float, linger_s: float = 0.0) -> list[Record]:
        """Up to max_records records: waits up to ``timeout_s`` for the first one, then
        up to ``linger_s`` for more (0: only what has arrived already). So a lone record
        is handed over at once, and batches form by themselves under load.
        Transport errors are logged, not returned."""
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        msgs = [first]
        if max_records > 1:
            msgs += self._consumer.consume(num_messages=max_records - 1, timeout=linger_s)
        out: list[Record] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    log.warning("consume error", extra={"code": err.name(), "error": err.str()})
                continue
            out.append(_record(msg))
        return out

    def store_offsets(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Mark (topic, partition) -> next offset to read as safe to commit."""
        if positions:
            self._consumer.store_offsets(
                offsets=[confluent_kafka.TopicPartition(t, p, o) for (t, p), o in positions.items()]
            )

    def commit(self) -> None:
        """Commit stored offsets synchronously (used at shutdown)."""
        try:
            self._consumer.commit(asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            if exc.args[0].code() != confluent_kafka.KafkaError._NO_OFFSET:
                raise

    def committed(self, topic: str, partitions: int, timeout_s: float = 10.0) -> dict[int, int]:
        """Partition -> committed offset of this group (-1001 where nothing committed)."""
        parts = [confluent_kafka.TopicPartition(topic, p) for p in range(partitions)]
        return {
            tp.partition: tp.offset for tp in self._consumer.committed(parts, timeout=timeout_s)
        }

    def end_offsets(self, topic: str, partitions: int, timeout_s: float = 10.0) -> dict[int, int]:
        """Partition -> offset the next record will get (the high watermark)."""
        return {
            p: self._consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, p), timeout=timeout_s
            )[1]
            for p in range(partitions)
        }

    def close(self) -> None:
        self._consumer.close()


def read_since(
    config: Mapping[str, str],
    topic: str,
    partitions: Iterable[int],
    since_ms: int,
    timeout_s: float = 10.0,
) -> list[Record]:
    """Every record of ``topic``'s given partitions written since ``since_ms`` (epoch
    ms) up to their current end, read without a consumer group."""
    conf: dict[str, Any] = {
        **config,
        "group.id": "rdv-read-since",
        "enable.auto.commit": "false",
        "error_cb": _error_cb(None),
    }
    consumer = confluent_kafka.Consumer(conf)
    try:
        wanted = [confluent_kafka.TopicPartition(topic, p, since_ms) for p in partitions]
        starts = consumer.offsets_for_times(wanted, timeout=timeout_s) if wanted else []
        ends = {
            tp.partition: consumer.get_watermark_offsets(tp, timeout=timeout_s)[1] for tp in wanted
        }
        todo = [tp for tp in starts if 0 <= tp.offset < ends[tp.partition]]
        if not todo:
            return []
        consumer.assign(todo)
        left = {tp.partition: ends[tp.partition] for tp in todo}
        out: list[Record] = []
        until = time.monotonic() + timeout_s
        while left and time.monotonic() < until:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    rec = _record(msg)
                    out.append(rec)
                    if rec.offset + 1 >= left.get(rec.partition, 0):
                        left.pop(rec.partition, None)
        if left:
            raise KafkaUnavailableError(f"could not read {topic} to its end in {timeout_s} s")
        return out
    finally:
        consumer.close()


def wait_for_broker(
    bootstrap: str, timeout_s: float, extra: Mapping[str, str] | None = None
) -> int:
    """Block until the cluster answers a metadata request; returns its broker count."""
    quiet = logging.getLogger("rdv.kafka.probe")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": quiet, **(extra or {})}
    until = time.monotonic() + max(timeout_s, 0.1)
    admin = AdminClient(conf)
    while True:
        left = until - time.monotonic()
        try:
            meta = admin.list_topics(timeout=max(min(left, 1.0), 0.1))
            if meta.brokers:
                return len(meta.brokers)
        except confluent_kafka.KafkaException:
            pass
        if time.monotonic() >= until:
            raise KafkaUnavailableError(
                f"no Kafka broker answered on {bootstrap} within {timeout_s:.0f} s"
            )


class Admin:
    """Topic administration: create what is missing and wait until it is usable."""

    def __init__(self, config: Mapping[str, str]) -> None:
        conf: dict[str, Any] = {**config, "error_cb": _on_client_error}
        self._admin = AdminClient(conf)

    def partitions(self, timeout_s: float = 10.0) -> dict[str, int]:
        """Topic name -> partition count, for every topic the cluster knows."""
        try:
            meta = self._admin.list_topics(timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise KafkaUnavailableError(f"cannot read cluster metadata: {exc}") from exc
        return {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}

    def create_topics(
        self, specs: Iterable[tuple[str, int, int, Mapping[str, str]]], timeout_s: float = 30.0
    ) -> list[str]:
        """Create (name, partitions, replication, config) topics that do not exist yet;
        returns the names created. Waits until every partition has a leader."""
        existing = self.partitions(timeout_s)
        todo = [
            NewTopic(name, num_partitions=parts, replication_factor=repl, config=dict(conf))
            for name, parts, repl, conf in specs
            if name not in existing
        ]
        created: list[str] = []
        if todo:
            for name, fut in self._admin.create_topics(todo, request_timeout=timeout_s).items():
                try:
                    fut.result()
                    created.append(name)
                except confluent_kafka.KafkaException as exc:
                    if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                        raise ConfigError(f"cannot create topic {name}: {exc}") from exc
        self._wait_leaders([t.topic for t in todo], time.monotonic() + timeout_s)
        return created

    def _wait_leaders(self, names: list[str], until: float) -> None:
        pending = set(names)
        while pending:
            meta = self._admin.list_topics(timeout=5.0)
            for name in list(pending):
                topic = meta.topics.get(name)
                if (
                    topic is not None
                    and topic.error is None
                    and topic.partitions
                    and all(p.leader >= 0 for p in topic.partitions.values())
                ):
                    pending.discard(name)
            if pending and time.monotonic() >= until:
                raise KafkaUnavailableError(f"topics not ready in time: {sorted(pending)}")
            if pending:
                time.sleep(0.05)  # metadata propagates within a few ms on one node

    def delete_topics(self, names: Iterable[str], timeout_s: float = 30.0) -> None:
        futures = self._admin.delete_topics(list(names), request_timeout=timeout_s)
        for fut in futures.values():
            fut.result()

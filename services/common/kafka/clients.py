"""Producer and consumer: the records they move, bounded queues, offsets stored only
when told to, and errors reported through one hook."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import confluent_kafka

from services.common.errors import BackpressureError, KafkaUnavailableError, ProduceError
from services.common.kafka.stats import stats_callback

log = logging.getLogger("rdv.kafka")
CLIENT_LOG = logging.getLogger("rdv.librdkafka")
"""librdkafka's own log lines, through the process's logging (JSON in the services)."""


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


_NO_SUCH_TOPIC = frozenset(
    {
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError._UNKNOWN_TOPIC,
        confluent_kafka.KafkaError.TOPIC_EXCEPTION,
    }
)

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
        self._producer = confluent_kafka.Producer(
            {**config, "error_cb": _error_cb(on_error), "logger": CLIENT_LOG}
            | stats_callback(config)
        )

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
        except confluent_kafka.KafkaException as exc:  # e.g. _UNKNOWN_PARTITION, too large
            err = exc.args[0] if exc.args else None
            if isinstance(err, confluent_kafka.KafkaError):
                raise ProduceError(f"{err.name()}: {err.str()}") from exc
            raise ProduceError(f"_UNKNOWN: {exc}") from exc

    def missing(self, topic: str, partition: int | None, timeout_s: float) -> str | None:
        """Why ``topic`` (and ``partition``, unless None) cannot take records according
        to the cluster's metadata, or None when it exists. Raises KafkaUnavailableError
        when the cluster does not answer within ``timeout_s`` (or cannot tell)."""
        try:
            meta = self._producer.list_topics(topic=topic, timeout=timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise KafkaUnavailableError(f"no metadata for topic {topic!r}: {exc}") from exc
        found = meta.topics.get(topic)
        if found is None:
            return f"topic {topic!r} does not exist"
        if found.error is not None:
            if found.error.code() in _NO_SUCH_TOPIC:
                return f"topic {topic!r} does not exist ({found.error.name()})"
            raise KafkaUnavailableError(f"metadata of {topic!r}: {found.error.name()}")
        if partition is not None and partition not in found.partitions:
            return (
                f"topic {topic!r} has no partition {partition} ({len(found.partitions)} partitions)"
            )
        return None

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


def client_timeout(seconds: float) -> float:
    """``seconds`` as the client counts them: it waits whole milliseconds and truncates,
    so a wait under 1 ms would not wait at all (a loop waiting for a timer 0.4 ms away
    would spin through polls until it is due). A positive wait is rounded up to whole
    ms (+ 0.5 ms, so that the truncation lands on them); 0 stays 0."""
    wait_ms = math.ceil(max(0.0, seconds) * 1000.0)
    return (wait_ms + 0.5) / 1000.0 if wait_ms else 0.0


class Consumer:
    """A group consumer that commits only offsets stored after output was produced."""

    def __init__(
        self,
        config: Mapping[str, str],
        on_error: ErrorHook | None = None,
        *,
        before_revoke: Callable[[], object] | None = None,
    ) -> None:
        """``before_revoke`` runs in the rebalance callback, before partitions are given
        up: outputs still waiting there (a producer lane's linger) can be sent before
        another member takes the partitions over."""
        self._consumer = confluent_kafka.Consumer(
            {**config, "error_cb": _error_cb(on_error), "logger": CLIENT_LOG}
            | stats_callback(config)
        )
        self._before_revoke = before_revoke
        self._paused: set[tuple[str, int]] = set()
        self._assigned: set[tuple[str, int]] = set()
        self._fresh: set[tuple[str, int]] = set()
        self._revoked: set[tuple[str, int]] = set()

    def subscribe(self, topics: Iterable[str]) -> None:
        def on_assign(_c: object, parts: list[confluent_kafka.TopicPartition]) -> None:
            self._paused.difference_update((p.topic, p.partition) for p in parts)  # unpaused
            self._assigned.update((p.topic, p.partition) for p in parts)
            self._fresh.update((p.topic, p.partition) for p in parts)

        def on_revoke(_c: object, parts: list[confluent_kafka.TopicPartition]) -> None:
            if self._before_revoke is not None and parts:
                self._before_revoke()
            self._assigned.difference_update((p.topic, p.partition) for p in parts)
            self._paused.difference_update((p.topic, p.partition) for p in parts)
            self._revoked.update((p.topic, p.partition) for p in parts)

        self._consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=on_revoke)

    def assign_at_end(self, topic: str, partition: int, timeout_s: float = 10.0) -> int:
        """Read one partition without a group, from its current end (records produced
        from now on); returns that offset. Positioned when this returns."""
        tp = confluent_kafka.TopicPartition(topic, partition)
        _, end = self._consumer.get_watermark_offsets(tp, timeout=timeout_s)
        self._consumer.assign([confluent_kafka.TopicPartition(topic, partition, end)])
        self._assigned = {(topic, partition)}
        return int(end)

    def assign_from(self, topic: str, offsets: dict[int, int]) -> None:
        """Read partitions without a group, each from the given offset."""
        self._consumer.assign(
            [confluent_kafka.TopicPartition(topic, p, o) for p, o in offsets.items()]
        )
        self._assigned = {(topic, p) for p in offsets}

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

    def take_revoked(self) -> frozenset[tuple[str, int]]:
        """Partitions taken away since the last call."""
        revoked, self._revoked = frozenset(self._revoked), set()
        return revoked

    def take_fresh_assignments(self) -> frozenset[tuple[str, int]]:
        """Partitions assigned since the last call (a processor may need to catch up on
        them before it handles their records)."""
        fresh, self._fresh = frozenset(self._fresh), set()
        return fresh

    def pause(self, parts: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (records fetched but not consumed yet are
        dropped and fetched again after ``resume``)."""
        todo = [p for p in parts if p not in self._paused]
        if todo:
            self._consumer.pause([confluent_kafka.TopicPartition(t, p) for t, p in todo])
            self._paused.update(todo)

    def resume(self, parts: Iterable[tuple[str, int]]) -> None:
        """Fetch these paused partitions again, from the next record not consumed."""
        todo = [p for p in parts if p in self._paused]
        if todo:
            self._consumer.resume([confluent_kafka.TopicPartition(t, p) for t, p in todo])
            self._paused.difference_update(todo)

    @property
    def paused(self) -> frozenset[tuple[str, int]]:
        return frozenset(self._paused)

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """(topic, partition) pairs this member owns now."""
        return frozenset(self._assigned)

    def consume(self, max_records: int, timeout_s: float, linger_s: float = 0.0) -> list[Record]:
        """Up to max_records records: waits up to ``timeout_s`` for the first one, then
        up to ``linger_s`` for more (0: only what has arrived already). So a lone record
        is handed over at once, and batches form by themselves under load.
        Transport errors are logged, not returned."""
        first = self._consumer.poll(client_timeout(timeout_s))
        if first is None:
            return []
        msgs = [first]
        if max_records > 1:
            msgs += self._consumer.consume(
                num_messages=max_records - 1, timeout=client_timeout(linger_s)
            )
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

"""Cluster-level operations: wait for a broker, create topics, read a time or offset
range, read a group's committed offsets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import confluent_kafka
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from services.common.errors import ConfigError, KafkaUnavailableError
from services.common.kafka.clients import (
    CLIENT_LOG,
    Record,
    _error_cb,
    _on_client_error,
    _record,
)

log = logging.getLogger("rdv.kafka")


def read_since(
    config: Mapping[str, str],
    topic: str,
    partitions: Iterable[int],
    since_ms: int,
    timeout_s: float = 10.0,
) -> list[Record]:
    """Every record of ``topic``'s given partitions written since ``since_ms`` (epoch
    ms) up to their current end, read without a consumer group. Retriable broker errors
    (a partition whose leader is being elected, as right after topic creation) are
    retried until ``timeout_s``; then, or for any other error, KafkaUnavailableError."""
    until = time.monotonic() + timeout_s
    return retry_transient(
        lambda: _read_since_once(config, topic, list(partitions), since_ms, until),
        f"read {topic}",
        until,
    )


T = TypeVar("T")


def retry_transient(call: Callable[[], T], what: str, until: float) -> T:
    """``call()``, again after a short back-off while the broker answers with a transient
    error (a leader being elected, as right after topic creation) and ``until``
    (monotonic s) has not passed; KafkaUnavailableError otherwise."""
    while True:
        try:
            return call()
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = isinstance(err, confluent_kafka.KafkaError) and (
                err.retriable() or err.code() in TRANSIENT
            )
            if not retriable or time.monotonic() >= until:
                raise KafkaUnavailableError(f"could not {what}: {exc}") from exc
            log.info("retrying", extra={"what": what, "error": str(exc)})
            time.sleep(RETRY_BACKOFF_S)  # back off from the broker, then ask again


RETRY_BACKOFF_S = 0.2
TRANSIENT = frozenset(
    {
        confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
        confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError._TIMED_OUT,
        confluent_kafka.KafkaError._TRANSPORT,
    }
)
"""Error codes retry_transient retries (for read_since and the control follower) even
when librdkafka does not mark them retriable."""


def read_from(
    config: Mapping[str, str], topic: str, starts: Mapping[int, int], timeout_s: float = 10.0
) -> list[Record]:
    """Every record of ``topic`` from the given offsets (partition -> offset; one below
    the log's start, e.g. -2, means its start) up to each partition's current end, read
    without a consumer group; retried as read_since."""
    until = time.monotonic() + timeout_s
    return retry_transient(
        lambda: _read_once(config, topic, None, dict(starts), until), f"read {topic}", until
    )


def committed_offsets(
    config: Mapping[str, str], topic: str, partitions: Iterable[int], timeout_s: float = 10.0
) -> dict[int, int]:
    """Partition -> the committed offset of ``config``'s group.id, for the partitions
    that have one (the group is not joined)."""
    until = time.monotonic() + timeout_s

    def once() -> dict[int, int]:
        conf: dict[str, Any] = {
            **config,
            "enable.auto.commit": "false",
            "error_cb": _error_cb(None),
            "logger": CLIENT_LOG,
        }
        consumer = confluent_kafka.Consumer(conf)
        try:
            wanted = [confluent_kafka.TopicPartition(topic, p) for p in partitions]
            got = consumer.committed(wanted, timeout=max(until - time.monotonic(), 0.1))
            return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
        finally:
            consumer.close()

    return retry_transient(once, f"read the committed offsets of {topic}", until)


def _read_since_once(
    config: Mapping[str, str], topic: str, partitions: list[int], since_ms: int, until: float
) -> list[Record]:
    return _read_once(config, topic, (partitions, since_ms), {}, until)


def _read_once(
    config: Mapping[str, str],
    topic: str,
    since: tuple[list[int], int] | None,
    starts: dict[int, int],
    until: float,
) -> list[Record]:
    """Read from ``starts``, or from the first record at or after ``since``'s time in
    its partitions, to the partitions' current ends."""
    conf: dict[str, Any] = {
        **config,
        "group.id": "rdv-read-since",
        "enable.auto.commit": "false",
        "error_cb": _error_cb(None),
        "logger": CLIENT_LOG,
    }
    consumer = confluent_kafka.Consumer(conf)
    try:
        left_s = max(until - time.monotonic(), 0.1)
        if since is not None:
            wanted = [confluent_kafka.TopicPartition(topic, p, since[1]) for p in since[0]]
            found = consumer.offsets_for_times(wanted, timeout=left_s) if wanted else []
        else:
            found = [confluent_kafka.TopicPartition(topic, p, o) for p, o in starts.items()]
        marks = {tp.partition: consumer.get_watermark_offsets(tp, timeout=left_s) for tp in found}
        ends = {part: high for part, (_, high) in marks.items()}
        for tp in found:  # a start before the log's start (or OFFSET_BEGINNING): its start
            if since is None and tp.offset < marks[tp.partition][0]:
                tp.offset = marks[tp.partition][0]
        todo = [tp for tp in found if 0 <= tp.offset < ends[tp.partition]]
        if not todo:
            return []
        consumer.assign(todo)
        left = {tp.partition: ends[tp.partition] for tp in todo}
        out: list[Record] = []
        while left and time.monotonic() < until:
            for msg in consumer.consume(500, 0.2):
                if msg.error() is None:
                    rec = _record(msg)
                    if rec.offset < left.get(rec.partition, -1):
                        out.append(rec)
                    if rec.offset + 1 >= left.get(rec.partition, 0):
                        left.pop(rec.partition, None)
        if left:
            raise KafkaUnavailableError(f"could not read {topic} to its end in time")
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
        conf: dict[str, Any] = {**config, "error_cb": _on_client_error, "logger": CLIENT_LOG}
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

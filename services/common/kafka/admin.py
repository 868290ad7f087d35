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
    with Reader(config, timeout_s) as reader:
        return reader.read_since(topic, partitions, since_ms)


def read_from(
    config: Mapping[str, str], topic: str, starts: Mapping[int, int], timeout_s: float = 10.0
) -> list[Record]:
    """Every record of ``topic`` from the given offsets to the partitions' current ends
    (see Reader.read_from), retried as read_since."""
    with Reader(config, timeout_s) as reader:
        return reader.read_from(topic, starts)


def committed_offsets(
    config: Mapping[str, str], topic: str, partitions: Iterable[int], timeout_s: float = 10.0
) -> dict[int, int]:
    """Partition -> the committed offset of ``config``'s group.id (see Reader.committed)."""
    with Reader(config, timeout_s) as reader:
        return reader.committed(topic, partitions)


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


class Reader:
    """One consumer connection for several reads by offset or time, without joining a
    group: its group.id (default rdv-read-since) only names whose committed offsets
    ``committed`` returns, and it never commits. Every call retries transient broker
    errors until the reader's deadline (``timeout_s`` from its creation), then raises
    KafkaUnavailableError."""

    def __init__(self, config: Mapping[str, str], timeout_s: float = 10.0) -> None:
        conf: dict[str, Any] = {
            "group.id": "rdv-read-since",
            **config,
            "enable.auto.commit": "false",
            "error_cb": _error_cb(None),
            "logger": CLIENT_LOG,
        }
        self._consumer = confluent_kafka.Consumer(conf)
        self._until = time.monotonic() + timeout_s

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._consumer.close()

    def _left(self) -> float:
        return max(self._until - time.monotonic(), 0.1)

    def committed(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Partition -> committed offset of the group, for the partitions that have one."""
        wanted = [confluent_kafka.TopicPartition(topic, p) for p in partitions]

        def once() -> dict[int, int]:
            got = self._consumer.committed(wanted, timeout=self._left())
            return {tp.partition: tp.offset for tp in got if tp.offset >= 0}

        return retry_transient(once, f"read the committed offsets of {topic}", self._until)

    def partitions(self) -> dict[str, int]:
        """Topic name -> partition count, for every topic the cluster knows."""

        def once() -> dict[str, int]:
            meta = self._consumer.list_topics(timeout=self._left())
            return {n: len(t.partitions) for n, t in meta.topics.items() if t.error is None}

        return retry_transient(once, "read cluster metadata", self._until)

    def read_since(self, topic: str, partitions: Iterable[int], since_ms: int) -> list[Record]:
        """Records of ``partitions`` written since ``since_ms`` (epoch ms), to their end."""
        wanted = [confluent_kafka.TopicPartition(topic, p, since_ms) for p in partitions]

        def once() -> list[Record]:
            found = self._consumer.offsets_for_times(wanted, timeout=self._left())
            return self._read(topic, found, clamp=False) if wanted else []

        return retry_transient(once, f"read {topic}", self._until)

    def read_from(self, topic: str, starts: Mapping[int, int]) -> list[Record]:
        """Records from the given offsets (partition -> offset; one below the log's
        start, e.g. -2, means its start) to the partitions' current ends."""
        found = [confluent_kafka.TopicPartition(topic, p, o) for p, o in starts.items()]
        return retry_transient(
            lambda: self._read(topic, found, clamp=True), f"read {topic}", self._until
        )

    def _read(
        self, topic: str, found: list[confluent_kafka.TopicPartition], *, clamp: bool
    ) -> list[Record]:
        marks = {
            tp.partition: self._consumer.get_watermark_offsets(tp, timeout=self._left())
            for tp in found
        }
        starts = {
            tp.partition: max(tp.offset, marks[tp.partition][0]) if clamp else tp.offset
            for tp in found
        }
        left = {p: marks[p][1] for p, o in starts.items() if 0 <= o < marks[p][1]}
        if not left:
            return []
        self._consumer.assign([confluent_kafka.TopicPartition(topic, p, starts[p]) for p in left])
        out: list[Record] = []
        try:
            while left and time.monotonic() < self._until:
                # as many as are left (consume returns at once when it has them all)
                want = min(sum(end - starts[p] for p, end in left.items()), 500)
                for msg in self._consumer.consume(max(want, 1), 0.2):
                    if msg.error() is None:
                        rec = _record(msg)
                        starts[rec.partition] = rec.offset + 1  # now the position
                        if rec.offset < left.get(rec.partition, -1):
                            out.append(rec)
                        if rec.offset + 1 >= left.get(rec.partition, 0):
                            left.pop(rec.partition, None)
        finally:
            self._consumer.unassign()
        if left:
            raise KafkaUnavailableError(f"could not read {topic} to its end in time")
        return out


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

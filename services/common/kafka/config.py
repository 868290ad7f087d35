"""Client configuration, merged in one fixed order (see ``merge_config``):

1. the platform's defaults for the client's role (low latency on the request path),
2. the security settings from ``KafkaSettings``,
3. the user's extra ``client_config``,
4. the pinned properties, which nobody may change: idempotent producers with
   ``acks=all`` and the Java-compatible murmur2 partitioner (so a request and its
   scores land on the same partition number), and consumers that store offsets only
   when told to (after their output was produced).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.common.errors import ConfigError
from services.common.settings import KafkaSettings

CLIENT_DEFAULTS: dict[str, str] = {
    # librdkafka backs off a broker that refuses connections up to 10 s by default: after
    # an outage every client would wait out up to 10 s once the broker is back. At most
    # 500 ms (with librdkafka's +-20% jitter) keeps "resumed within 3 s of the broker
    # accepting connections" (docs/benchmarks.md, "Fast failover").
    "reconnect.backoff.ms": "100",
    "reconnect.backoff.max.ms": "500",
    "retry.backoff.ms": "100",
    "retry.backoff.max.ms": "500",
}
STATS_DEFAULTS: dict[str, str] = {
    # librdkafka's statistics every 5 s: the requests each client sends the broker, as
    # rdv_kafka_requests_total (services.common.kafka.stats). 0 turns them off.
    "statistics.interval.ms": "5000",
}
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
BATCH_FETCH_BYTES = 65536


def batched_fetch(wait_ms: int) -> dict[str, str]:
    """Consumer properties for a reader off the answer path: the broker answers its fetch
    once BATCH_FETCH_BYTES have arrived or ``wait_ms`` has passed, so the reader sends
    one fetch per interval under light load instead of one per record."""
    return {"fetch.min.bytes": str(BATCH_FETCH_BYTES), "fetch.wait.max.ms": str(wait_ms)}


ASSIGNED_READER_WAIT_MS = 1000


def assigned_reader() -> dict[str, str]:
    """Consumer properties for a reader that assigns its partitions itself, once, and is
    never rebalanced (the control followers, the gateway's reply reader). The broker
    holds its fetch until a record arrives (CONSUMER_DEFAULTS' fetch.min.bytes of 1: no
    record waits for the bound) or ASSIGNED_READER_WAIT_MS pass: an idle reader sends
    one empty fetch a second instead of ten. Group members keep the 100 ms bound:
    librdkafka adds a newly assigned partition to its fetches only once the fetch in
    flight has returned, so a long bound would slow a fail-over. A default: the user's
    ``client_config`` wins."""
    return {"fetch.wait.max.ms": str(ASSIGNED_READER_WAIT_MS)}


CLASSIC_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")
"""Consumer properties of the classic group protocol. With ``group.protocol=consumer``
(KIP-848) the broker owns them (group.consumer.* broker and group configs) and
librdkafka refuses them; the assignor is then ``group.remote.assignor``."""


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
        CLIENT_DEFAULTS,
        STATS_DEFAULTS,
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
    *,
    defaults: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A consumer's config. Where ``group.protocol`` is ``consumer`` (KIP-848, chosen in
    ``client_config`` or ``overrides``), the classic-only defaults are left out and the
    broker's range assignor is asked for (it keeps co-partitioned topics together).
    ``defaults`` go over CONSUMER_DEFAULTS and under the user's ``client_config``;
    ``overrides`` go over both."""
    base = {"bootstrap.servers": settings.bootstrap, "client.id": client_id, "group.id": group_id}
    layers = (base, settings.security_config(), settings.client_config, overrides or {})
    chosen = merge_config(*layers, pinned={})
    base_defaults = dict(CONSUMER_DEFAULTS) | dict(defaults or {})
    if chosen.get("group.protocol") == "consumer":
        for key in CLASSIC_ONLY:
            base_defaults.pop(key)
            if key in chosen:
                raise ConfigError(
                    f"Kafka property {key} is not used with group.protocol=consumer: the "
                    "broker's group.consumer.* settings govern the group"
                )
        base_defaults["group.remote.assignor"] = "range"
    return merge_config(
        CLIENT_DEFAULTS, STATS_DEFAULTS, base_defaults, *layers, pinned=CONSUMER_PINNED
    )


def admin_config(settings: KafkaSettings) -> dict[str, str]:
    return merge_config(
        CLIENT_DEFAULTS,
        {"bootstrap.servers": settings.bootstrap},
        settings.security_config(),
        settings.client_config,
        pinned={},
    )

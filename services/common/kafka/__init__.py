"""The one package that owns ``confluent_kafka``; nothing else imports it.

``config`` merges client settings in a fixed order and pins what delivery depends on,
``clients`` has the producer and the consumer, ``lanes`` producers chosen by topic,
``admin`` the cluster-level calls,
``stats`` the Kafka requests each client sent (librdkafka's statistics, as a metric).
"""

from services.common.kafka.admin import (
    Admin,
    Reader,
    committed_offsets,
    read_from,
    read_since,
    retry_transient,
    wait_for_broker,
)
from services.common.kafka.clients import Consumer, ErrorHook, Outbound, Producer, Record
from services.common.kafka.config import (
    ASSIGNED_READER_WAIT_MS,
    CLIENT_DEFAULTS,
    CONSUMER_DEFAULTS,
    CONSUMER_PINNED,
    PERMANENT_DELIVERY_ERRORS,
    PRODUCER_DEFAULTS,
    PRODUCER_PINNED,
    admin_config,
    assigned_reader,
    batched_fetch,
    consumer_config,
    is_permanent,
    merge_config,
    producer_config,
)
from services.common.kafka.lanes import Lanes

__all__ = [
    "ASSIGNED_READER_WAIT_MS",
    "CLIENT_DEFAULTS",
    "CONSUMER_DEFAULTS",
    "CONSUMER_PINNED",
    "PERMANENT_DELIVERY_ERRORS",
    "PRODUCER_DEFAULTS",
    "PRODUCER_PINNED",
    "Admin",
    "Consumer",
    "ErrorHook",
    "Lanes",
    "Outbound",
    "Producer",
    "Reader",
    "Record",
    "admin_config",
    "assigned_reader",
    "batched_fetch",
    "committed_offsets",
    "consumer_config",
    "is_permanent",
    "merge_config",
    "producer_config",
    "read_from",
    "read_since",
    "retry_transient",
    "wait_for_broker",
]

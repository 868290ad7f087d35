"""The producer wrapper turns librdkafka's on-the-spot refusals into ProduceError (so
the loop can dead-letter the input instead of stopping), and its metadata check says
when no broker answers. No broker needed: nothing here reaches one."""

from __future__ import annotations

import pytest

from services.common.errors import KafkaUnavailableError, ProduceError
from services.common.kafka import Outbound, Producer, is_permanent

NOWHERE = {"bootstrap.servers": "127.0.0.1:1", "log_level": "0"}


def test_a_record_over_the_size_limit_is_refused_as_a_permanent_produce_error() -> None:
    producer = Producer({**NOWHERE, "message.max.bytes": "1000"})
    with pytest.raises(ProduceError) as caught:  # before: confluent_kafka.KafkaException
        producer.produce(Outbound("t", b"k", b"x" * 5000))
    assert caught.value.error.startswith("MSG_SIZE_TOO_LARGE") or caught.value.error.startswith(
        "_MSG_SIZE_TOO_LARGE"
    )
    assert is_permanent(caught.value.error)
    assert caught.value.code == "delivery_failed"


def test_the_metadata_check_says_when_no_broker_answers() -> None:
    producer = Producer(NOWHERE)
    with pytest.raises(KafkaUnavailableError, match="no metadata"):
        producer.missing("t", 0, timeout_s=0.5)

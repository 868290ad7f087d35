"""A transactional producer: outputs and a consumer group's offsets in one atomic write.

The platform does not run its loop in transactions (docs/benchmarks.md, "Exactly one
answer": the cost and the failure modes were measured and the rendezvous reads back
instead); this wrapper exists so that the cost can be measured again on any cluster
(``python -m bench.txn_cost``) with the same client settings the services use.
"""

from __future__ import annotations

from collections.abc import Mapping

import confluent_kafka

from services.common.kafka.clients import Consumer, Producer


def transactional_config(
    base: Mapping[str, str], transactional_id: str, timeout_ms: int = 10_000
) -> dict[str, str]:
    """``base`` (a producer_config) made transactional. librdkafka needs
    message.timeout.ms <= transaction.timeout.ms, so both are set."""
    return {
        **base,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": str(timeout_ms),
        "message.timeout.ms": str(timeout_ms),
    }


class TransactionalProducer(Producer):
    """A Producer whose records are visible to read_committed readers only once the
    transaction they were produced in commits."""

    def init(self, timeout_s: float = 30.0) -> None:
        """Register the transactional id (fences an older producer with the same id)."""
        self._producer.init_transactions(timeout_s)

    def begin(self) -> None:
        self._producer.begin_transaction()

    def send_offsets(
        self, consumer: Consumer, positions: Mapping[tuple[str, int], int], timeout_s: float = 10
    ) -> None:
        """Commit ``positions`` ((topic, partition) -> next offset) for ``consumer``'s
        group as part of the open transaction."""
        if not positions:
            return
        parts = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in positions.items()]
        meta = consumer._consumer.consumer_group_metadata()  # same package
        self._producer.send_offsets_to_transaction(parts, meta, timeout_s)

    def commit(self, timeout_s: float = 10.0) -> None:
        """Flush and commit the open transaction."""
        self._producer.commit_transaction(timeout_s)

    def abort(self, timeout_s: float = 10.0) -> None:
        self._producer.abort_transaction(timeout_s)

"""The consumer wrapper's waits in the client's own unit: whole milliseconds."""

from __future__ import annotations

from services.common.kafka.clients import Consumer, client_timeout


def as_client_ms(seconds: float) -> int:
    """What confluent-kafka waits for a timeout in seconds: truncated to whole ms."""
    return int(seconds * 1000)


def test_a_wait_under_a_millisecond_waits_one_and_none_stays_none() -> None:
    waits = [0.0, -1.0, 0.0004, 0.001, 0.0029, 0.003, 0.25]
    assert [as_client_ms(client_timeout(w)) for w in waits] == [0, 0, 1, 1, 3, 3, 250]


class Recording:
    """Stands in for confluent_kafka.Consumer: returns nothing, records the timeouts."""

    def __init__(self) -> None:
        self.polls: list[float] = []

    def poll(self, timeout: float) -> None:
        self.polls.append(timeout)


def test_consume_hands_the_client_whole_milliseconds() -> None:
    consumer = Consumer.__new__(Consumer)  # no broker: only the client is replaced
    client = Recording()
    consumer._consumer = client  # type: ignore[assignment]

    assert consumer.consume(10, 0.0004) == []
    assert consumer.consume(10, 0.0) == []

    assert [as_client_ms(t) for t in client.polls] == [1, 0]

"""The poll loop's bookkeeping with an in-memory consumer and producer (no broker)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from prometheus_client import REGISTRY

from services.common.codec import decode, encode, message_key
from services.common.errors import DeliveryError
from services.common.kafka import Outbound, Record
from services.common.loop import Context, Inbound, StreamRunner
from services.common.messages import DeadLetter, RequestEnvelope
from tests.factories import request


class FakeConsumer:
    def __init__(self, records: list[Record]) -> None:
        self.pending = list(records)
        self.stored: dict[tuple[str, int], int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.closed = False
        self.assignment = frozenset({("in", 0), ("in", 1)})

    def subscribe(self, topics: object) -> None:
        pass

    def consume(self, max_records: int, timeout_s: float, linger_s: float = 0.0) -> list[Record]:
        batch, self.pending = self.pending[:max_records], self.pending[max_records:]
        return batch

    def store_offsets(self, positions: dict[tuple[str, int], int]) -> None:
        self.stored.update(positions)

    def commit(self) -> None:
        self.committed = dict(self.stored)

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Acknowledges a record only when the test says so (``ack``)."""

    def __init__(self) -> None:
        self.sent: list[Outbound] = []
        self.unacked: list[Callable[[str | None], None]] = []

    def produce(self, out: Outbound, on_delivery: Callable[[str | None], None]) -> None:
        self.sent.append(out)
        self.unacked.append(on_delivery)

    def ack(self, error: str | None = None) -> None:
        for report in self.unacked:
            report(error)
        self.unacked.clear()

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0

    def flush(self, timeout_s: float) -> int:
        self.ack()
        return 0


class Scorer:
    """Emits one output per request; raises on "boom"; holds requests whose payload is
    "hold" until release_all() is asked for by a later tick."""

    def __init__(self) -> None:
        self.held: list[Record] = []
        self.release_now = False

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for item in batch:
            if item.message.payload == "boom":
                raise RuntimeError("boom")
            if item.message.payload == "hold":
                ctx.hold(item.record)
                self.held.append(item.record)
            ctx.emit(Outbound("out", item.record.key or b"", b"scored"), source=item.record)

    def tick(self, now_ms: float, ctx: Context) -> None:
        if self.release_now:
            for rec in self.held:
                ctx.release(rec)
            self.held.clear()


def rec(offset: int, value: bytes, partition: int = 0) -> Record:
    return Record("in", partition, offset, f"k{offset}".encode(), value)


def req(payload: str) -> bytes:
    return encode(request(payload))


def make(
    records: list[Record], scorer: Scorer | None = None
) -> tuple[StreamRunner, FakeConsumer, FakeProducer]:
    consumer, producer = FakeConsumer(records), FakeProducer()
    loop = StreamRunner(
        service="unit",
        consumer=consumer,
        producer=producer,  # type: ignore[arg-type]
        decoders={"in": lambda b: decode(b, RequestEnvelope)},
        processor=scorer or Scorer(),
        dead_letter_topic="dlq",
        batch_size=10,
    )
    return loop, consumer, producer


def test_offsets_are_stored_only_after_outputs_are_acknowledged() -> None:
    loop, consumer, producer = make([rec(0, req("a")), rec(1, req("b"))])

    loop._turn(10)
    assert len(producer.sent) == 2
    assert consumer.stored == {}  # produced but not acknowledged: nothing committable

    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 2}


def test_bad_bytes_and_a_failing_record_become_dead_letters_others_go_on() -> None:
    records = [rec(0, req("a")), rec(1, b"{nope"), rec(2, req("boom")), rec(3, req("b"))]
    loop, consumer, producer = make(records)

    stats = loop.run(max_records=4)

    assert (stats.records, stats.dead_letters) == (4, 2)
    assert [o.topic for o in producer.sent].count("out") == 2
    letters = [decode(o.value, DeadLetter) for o in producer.sent if o.topic == "dlq"]
    assert [(d.origin_offset, d.error_code) for d in letters] == [
        (1, "bad_message"),
        (2, "RuntimeError"),
    ]
    assert consumer.committed == {("in", 0): 4}
    assert consumer.closed


def test_a_held_record_blocks_its_partition_until_released() -> None:
    scorer = Scorer()
    loop, consumer, producer = make(
        [rec(0, req("hold")), rec(1, req("a")), rec(0, req("b"), partition=1)], scorer
    )

    loop._turn(10)
    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 1): 1}  # partition 0 waits for the held record

    scorer.release_now = True
    loop._turn(10)
    assert consumer.stored == {("in", 0): 2, ("in", 1): 1}


def test_delivery_failure_stops_the_loop_without_committing_the_record() -> None:
    loop, consumer, producer = make([rec(0, req("a"))])
    loop._turn(10)
    producer.ack(error="_MSG_TIMED_OUT: timed out")

    with pytest.raises(DeliveryError, match="not acknowledged"):
        loop._settle()
    assert consumer.stored == {}


def test_outputs_keep_the_request_key() -> None:
    loop, _, producer = make([rec(0, req("a"))])
    loop.run(max_records=1)
    assert producer.sent[0].key == b"k0"
    assert message_key(request("x", request_id="abc")) == b"abc"


def test_an_output_that_can_never_be_delivered_parks_its_input_in_dead_letters() -> None:
    loop, consumer, producer = make([rec(0, req("a"))])
    loop._turn(10)
    producer.ack(error="_UNKNOWN_PARTITION: Local: Unknown partition")

    loop._settle()  # no exception: retrying cannot help, so the input is parked
    [letter_out] = [o for o in producer.sent if o.topic == "dlq"]
    letter = decode(letter_out.value, DeadLetter)
    assert (letter.origin_offset, letter.error_code) == (0, "delivery_failed")
    assert "cannot be delivered" in letter.error
    assert consumer.stored == {}  # not before the dead letter is acknowledged

    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 1}


class Streamer(Scorer):
    """Also sends a best-effort output per request (raising "full" on payload "full")."""

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for item in batch:
            ctx.emit_best_effort(Outbound("side", b"k", item.message.payload.encode()))
        super().process(batch, ctx)


class PickyProducer(FakeProducer):
    def produce(self, out: Outbound, on_delivery: Callable[[str | None], None]) -> None:
        if out.value == b"full":
            raise DeliveryError("queue full")
        super().produce(out, on_delivery)


def test_best_effort_outputs_hold_no_offset_and_their_failures_are_only_counted() -> None:
    def lost() -> float:
        return (
            REGISTRY.get_sample_value("rdv_stream_best_effort_lost_total", {"service": "unit"})
            or 0.0
        )

    loop, consumer, _ = make([rec(0, req("a")), rec(1, req("full"))], Streamer())
    producer = PickyProducer()
    loop._producer = producer  # type: ignore[assignment]
    before = lost()

    loop._turn(10)
    assert [o.topic for o in producer.sent] == ["side", "out", "out"]  # side first
    producer.unacked[0]("_MSG_TIMED_OUT: gone")  # the side output fails: no raise
    producer.ack()
    loop._settle()

    assert consumer.stored == {("in", 0): 2}
    assert lost() == before + 2

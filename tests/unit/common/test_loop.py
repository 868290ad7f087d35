"""The poll loop's bookkeeping with an in-memory consumer and producer (no broker)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from prometheus_client import REGISTRY

from services.common.codec import decode, encode, message_key
from services.common.errors import (
    BackpressureError,
    DeliveryError,
    KafkaUnavailableError,
    ProduceError,
)
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
        self.absent: dict[tuple[str, int | None], str] = {}  # what metadata says is missing
        self.cluster_down = False
        self.refuse: dict[tuple[str, int | None], str] = {}  # raised by produce() itself
        self.full_for = 0  # the next produce() calls that find the queue full
        self.metadata_calls = 0

    def produce(self, out: Outbound, on_delivery: Callable[[str | None], None]) -> None:
        if self.full_for > 0:
            self.full_for -= 1
            raise BackpressureError("queue full")
        if (error := self.refuse.get((out.topic, out.partition))) is not None:
            raise ProduceError(error)
        self.sent.append(out)
        self.unacked.append(on_delivery)

    def missing(self, topic: str, partition: int | None, timeout_s: float) -> str | None:
        self.metadata_calls += 1
        if self.cluster_down:
            raise KafkaUnavailableError("no broker answered")
        return self.absent.get((topic, partition)) or self.absent.get((topic, None))

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


def test_a_timed_out_output_whose_topic_exists_is_produced_again_not_raised() -> None:
    loop, consumer, producer = make([rec(0, req("a"))])
    loop._turn(10)
    producer.ack(error="_MSG_TIMED_OUT: timed out")

    loop._settle()  # before: DeliveryError, the service stopped
    assert [o.topic for o in producer.sent] == ["out", "out"]
    assert consumer.stored == {}  # not committed while its output is not acknowledged
    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 1}
    assert loop.stats.dead_letters == 0


def test_a_broker_outage_retries_outputs_and_dead_letters_nothing() -> None:
    loop, consumer, producer = make([rec(0, req("a")), rec(1, req("b"))])
    producer.cluster_down = True
    loop._turn(10)
    for _ in range(3):  # every attempt times out while the cluster is away
        producer.ack(error="_MSG_TIMED_OUT: timed out")
        loop._settle()
    assert producer.metadata_calls == 1  # asked once, then trusted for a while
    assert [o.topic for o in producer.sent] == ["out"] * 8
    assert consumer.stored == {}

    producer.cluster_down = False
    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 2}
    assert loop.stats.dead_letters == 0


def test_an_output_to_a_topic_that_does_not_exist_dead_letters_its_input_alone() -> None:
    class ToReturnAddress(Scorer):
        def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
            for item in batch:
                topic = item.message.return_address.topic
                ctx.emit(Outbound(topic, b"k", b"reply"), source=item.record)

    bad = encode(request("x", reply_topic="no.such.topic"))
    loop, consumer, producer = make([rec(0, bad), rec(1, req("b"))], ToReturnAddress())
    producer.absent[("no.such.topic", None)] = "topic 'no.such.topic' does not exist"
    loop._turn(10)
    producer.unacked[0]("_MSG_TIMED_OUT: Local: Message timed out")
    producer.unacked[1](None)
    producer.unacked.clear()

    loop._settle()  # before: DeliveryError, then a crash loop on the same record
    [letter] = [decode(o.value, DeadLetter) for o in producer.sent if o.topic == "dlq"]
    assert (letter.origin_offset, letter.error_code) == (0, "delivery_failed")
    assert "does not exist" in letter.error
    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 2}


def test_an_output_refused_on_the_spot_dead_letters_its_input_and_the_loop_goes_on() -> None:
    class ToPartition(Scorer):
        def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
            for item in batch:
                part = 99 if item.message.payload == "bad" else 0
                ctx.emit(Outbound("replies", b"k", b"r", partition=part), source=item.record)

    loop, consumer, producer = make([rec(0, req("bad")), rec(1, req("b"))], ToPartition())
    producer.refuse[("replies", 99)] = "_UNKNOWN_PARTITION: Local: Unknown partition"

    stats = loop.run(max_records=2)  # before: KafkaException out of produce() stopped it

    assert stats.dead_letters == 1
    [letter] = [decode(o.value, DeadLetter) for o in producer.sent if o.topic == "dlq"]
    assert letter.origin_offset == 0
    assert "_UNKNOWN_PARTITION" in letter.error
    assert [o.partition for o in producer.sent if o.topic == "replies"] == [0]
    assert consumer.committed == {("in", 0): 2}


def test_a_full_queue_makes_the_loop_wait_not_fail() -> None:
    loop, consumer, producer = make([rec(0, req("a"))])
    producer.full_for = 3
    loop._turn(10)
    assert [o.topic for o in producer.sent] == ["out"]
    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 1}


def test_a_dead_letter_that_cannot_be_delivered_is_dropped_not_looped() -> None:
    loop, consumer, producer = make([rec(0, b"{nope")])
    producer.refuse[("dlq", None)] = "_UNKNOWN_TOPIC: Local: Unknown topic"
    loop._turn(10)
    loop._settle()
    assert producer.sent == []
    assert consumer.stored == {("in", 0): 1}  # logged and counted; the loop goes on


class Boxes:
    """A stateful processor (a rendezvous in miniature): a request opens a box and is
    held; "close:<id>" answers and releases it. Opening an id twice or closing an
    unknown one raises, after validating and before changing anything."""

    def __init__(self, *, isolate: bool = True) -> None:
        self.open: dict[str, Record] = {}
        self.seen: list[str] = []
        self.isolate = isolate
        self.crash_after: str | None = None  # raise outside any block after this one

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for item in batch:
            if self.isolate:
                with ctx.isolate(item.record):
                    self._one(item, ctx)
            else:
                self._one(item, ctx)
            if item.message.payload == self.crash_after:
                raise RuntimeError("a bug between records")

    def _one(self, item: Inbound, ctx: Context) -> None:
        payload: str = item.message.payload
        self.seen.append(payload)
        if payload.startswith("close:"):
            held = self.open.pop(payload[6:])  # KeyError before any change
            ctx.emit(Outbound("out", b"k", payload.encode()), source=[held, item.record])
            ctx.release(held)
            return
        ctx.hold(item.record)  # recorded first: dropped if the check below fails
        if payload in self.open:
            raise ValueError(f"{payload} is open already")
        self.open[payload] = item.record

    def tick(self, now_ms: float, ctx: Context) -> None:
        pass


def test_a_stateful_processor_fails_one_record_alone_and_sees_the_others_once() -> None:
    boxes = Boxes()
    records = [rec(0, req("a")), rec(1, req("a")), rec(2, req("close:a")), rec(3, req("b"))]
    loop, consumer, producer = make(records, boxes)

    loop._turn(10)

    assert boxes.seen == ["a", "a", "close:a", "b"]  # nothing fed twice
    assert set(boxes.open) == {"b"}
    [letter] = [decode(o.value, DeadLetter) for o in producer.sent if o.topic == "dlq"]
    assert (letter.origin_offset, letter.error_code) == (1, "ValueError")
    assert [o.value for o in producer.sent if o.topic == "out"] == [b"close:a"]
    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 3}  # b is still held


def test_an_exception_between_records_keeps_finished_work_and_retries_the_rest() -> None:
    boxes = Boxes()
    boxes.crash_after = "a"
    records = [rec(0, req("a")), rec(1, req("close:a")), rec(2, req("b"))]
    loop, consumer, producer = make(records, boxes)

    loop._turn(10)

    assert boxes.seen == ["a", "close:a", "b"]  # "a" not re-fed after the failed pass
    assert boxes.open.keys() == {"b"}
    assert [o.value for o in producer.sent if o.topic == "out"] == [b"close:a"]
    assert loop.stats.dead_letters == 0
    producer.ack()
    loop._settle()
    assert consumer.stored == {("in", 0): 2}


def test_without_isolation_the_old_replay_would_open_a_box_twice() -> None:
    """The defect the contract removes: a stateful processor that raises mid-batch
    without isolate blocks is re-fed the records it had already handled."""
    boxes = Boxes(isolate=False)
    records = [rec(0, req("a")), rec(1, req("close:zz")), rec(2, req("b"))]
    loop, _, producer = make(records, boxes)

    loop._turn(10)

    assert boxes.seen[:2] == ["a", "close:zz"]
    dead = [decode(o.value, DeadLetter).origin_offset for o in producer.sent if o.topic == "dlq"]
    assert 0 in dead  # "a" re-fed: its box is open already, so it fails the second time


def test_a_failing_tick_step_is_dropped_alone_and_an_escaping_error_stops_the_loop() -> None:
    class Ticking(Scorer):
        def tick(self, now_ms: float, ctx: Context) -> None:
            with ctx.isolate(None):
                ctx.emit(Outbound("out", b"k", b"kept"))
            with ctx.isolate(None):
                ctx.emit(Outbound("out", b"k", b"dropped"))
                raise RuntimeError("one step fails")
            ctx.emit(Outbound("out", b"k", b"after"))
            if self.release_now:
                raise OSError("the disk is full")

    ticking = Ticking()
    loop, _, producer = make([rec(0, req("a"))], ticking)
    loop._turn(10)
    assert [o.value for o in producer.sent] == [b"scored", b"kept", b"after"]
    ticking.release_now = True
    with pytest.raises(OSError, match="disk is full"):  # no record to blame: stop
        loop._turn(10)


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


class WaitRecorder(FakeConsumer):
    def __init__(self) -> None:
        super().__init__([])
        self.waits: list[float] = []

    def consume(self, max_records: int, timeout_s: float, linger_s: float = 0.0) -> list[Record]:
        self.waits.append(timeout_s)
        return []


def test_a_turn_waits_until_the_processors_next_timer_at_most_the_idle_poll() -> None:
    consumer = WaitRecorder()
    due: list[float | None] = [None, 0.03, 5.0, -1.0, 0.0004, 0.0]
    loop = StreamRunner(
        service="unit",
        consumer=consumer,  # type: ignore[arg-type]
        producer=FakeProducer(),  # type: ignore[arg-type]
        decoders={"in": lambda b: decode(b, RequestEnvelope)},
        processor=Scorer(),
        dead_letter_topic="dlq",
        poll_timeout_s=0.002,
        until_due=lambda: due.pop(0),
        idle_poll_s=0.25,
    )
    for _ in range(6):
        loop._turn(10)
    # the timer's own time: the consumer turns it into whole ms (client_timeout)
    assert consumer.waits == [0.25, 0.03, 0.25, 0.0, 0.0004, 0.0]


def test_without_a_timer_hook_a_turn_waits_the_poll_timeout() -> None:
    consumer = WaitRecorder()
    loop = StreamRunner(
        service="unit",
        consumer=consumer,  # type: ignore[arg-type]
        producer=FakeProducer(),  # type: ignore[arg-type]
        decoders={"in": lambda b: decode(b, RequestEnvelope)},
        processor=Scorer(),
        dead_letter_topic="dlq",
        poll_timeout_s=0.02,
    )
    loop._turn(10)
    assert consumer.waits == [0.02]

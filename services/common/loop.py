"""The one poll loop every stream service runs: poll -> decode -> process -> produce ->
store offsets.

A record's offset is stored (and so committed) only after every output it caused was
acknowledged by the broker and no processor holds it open: at-least-once, never
at-most-once. Undecodable records, and records on which the processor raises, go to
the dead-letter topic with their origin; the loop keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter, Histogram

from services.common.codec import encode, make_dead_letter, message_key
from services.common.errors import DeliveryError, MessageError
from services.common.kafka import Consumer, Outbound, Producer, Record, is_permanent
from services.common.offsets import OffsetTracker, Ticket

log = logging.getLogger("rdv.loop")

RECORDS = Counter("rdv_stream_records_total", "Records consumed", ["service", "topic"])
DEAD_LETTERS = Counter(
    "rdv_stream_dead_letters_total", "Records sent to dead letters", ["service", "topic"]
)
DELIVERY_FAILURES = Counter(
    "rdv_stream_delivery_failures_total", "Outputs the broker did not acknowledge", ["service"]
)
BEST_EFFORT_LOST = Counter(
    "rdv_stream_best_effort_lost_total",
    "Best-effort outputs (e.g. streaming deltas) not queued or not acknowledged",
    ["service"],
)
BATCH = Histogram(
    "rdv_stream_batch_records",
    "Records per consumed batch",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

Decoder = Callable[[bytes | None], Any]


@dataclass(frozen=True)
class Inbound:
    """A consumed record and its decoded message."""

    record: Record
    message: Any


@dataclass
class Context:
    """What a processor may do; effects apply only if its call returns normally."""

    emits: list[tuple[Outbound, Sequence[Record]]] = field(default_factory=list)
    holds: list[Record] = field(default_factory=list)
    releases: list[Record] = field(default_factory=list)
    best_effort: list[Outbound] = field(default_factory=list)

    def emit(self, out: Outbound, source: Record | Sequence[Record] | None = None) -> None:
        """Produce ``out``; the offsets of ``source`` (one record or several) wait until
        the broker acknowledged it."""
        sources = () if source is None else (source,) if isinstance(source, Record) else source
        self.emits.append((out, tuple(sources)))

    def emit_best_effort(self, out: Outbound) -> None:
        """Produce ``out`` with no offset waiting for it; a failure to queue or deliver
        it is counted and logged, never raised (streaming deltas, grants)."""
        self.best_effort.append(out)

    def hold(self, record: Record) -> None:
        """Keep ``record``'s offset uncommitted until ``release`` (an open mailbox)."""
        self.holds.append(record)

    def release(self, record: Record) -> None:
        self.releases.append(record)


class Processor(Protocol):
    """A service's logic. ``process`` gets each decoded batch, ``tick`` runs every turn."""

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None: ...

    def tick(self, now_ms: float, ctx: Context) -> None: ...


@dataclass
class RunStats:
    records: int = 0
    dead_letters: int = 0
    produced: int = 0


def dead_letter_for(rec: Record, exc: Exception, service: str, topic: str) -> Outbound:
    """The dead-letter record for ``rec``, which failed with ``exc`` in ``service``."""
    letter = make_dead_letter(
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
        error=exc,
        service=service,
        now_ms=int(time.time() * 1000),
    )
    return Outbound(topic, message_key(letter), encode(letter))


class StreamRunner:
    """Drives one consumer, one producer and one processor until stopped."""

    def __init__(
        self,
        *,
        service: str,
        consumer: Consumer,
        producer: Producer,
        decoders: Mapping[str, Decoder],
        processor: Processor,
        dead_letter_topic: str,
        batch_size: int = 64,
        poll_timeout_s: float = 0.02,
        flush_timeout_s: float = 10.0,
        on_assign: Callable[[frozenset[tuple[str, int]]], None] | None = None,
        on_revoke: Callable[[frozenset[tuple[str, int]]], None] | None = None,
        batch_linger_s: float = 0.0,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.service = service
        self._consumer = consumer
        self._producer = producer
        self._decoders = dict(decoders)
        self._processor = processor
        self._dlq = dead_letter_topic
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._flush_timeout_s = flush_timeout_s
        self._tracker = OffsetTracker()
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._linger_s = batch_linger_s
        self._busy = busy  # True while the processor has work of its own (generation)
        self._failures: list[str] = []
        self._undeliverable: list[tuple[Outbound, Record, Sequence[Ticket], str]] = []
        self._stop = threading.Event()
        self.stats = RunStats()
        self.last_turn: float | None = None  # monotonic seconds of the latest turn

    def stop(self) -> None:
        """Ask the loop to finish its turn and shut down (safe from signals, threads)."""
        self._stop.set()

    @property
    def ready(self) -> bool:
        """True once the group gave this member partitions to read."""
        return bool(self._consumer.assignment)

    def run(
        self, *, max_records: int | None = None, idle_timeout_s: float | None = None
    ) -> RunStats:
        """Loop until stop(), ``max_records`` consumed, or no record for ``idle_timeout_s``;
        then wait for outputs in flight (bounded), store and commit what is done."""
        self._consumer.subscribe(self._decoders)
        last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                want = (
                    self._batch_size
                    if max_records is None
                    else min(self._batch_size, max_records - self.stats.records)
                )
                if want <= 0:
                    break
                if self._turn(want):
                    last_activity = time.monotonic()
                if idle_timeout_s is not None and time.monotonic() - last_activity > idle_timeout_s:
                    break
            self._producer.flush(self._flush_timeout_s)
            self._settle()
            self._consumer.commit()
        finally:
            self._consumer.close()
        return self.stats

    def healthy(self, stall_s: float = 60.0) -> bool:
        """The loop has turned within ``stall_s`` (or has not started yet)."""
        return self.last_turn is None or time.monotonic() - self.last_turn < stall_s

    def _turn(self, max_records: int) -> bool:
        self.last_turn = time.monotonic()
        busy = self._busy is not None and self._busy()
        records = self._consumer.consume(
            max_records, 0.0 if busy else self._poll_timeout_s, 0.0 if busy else self._linger_s
        )
        if self._on_revoke is not None and (gone := self._consumer.take_revoked()):
            self._tracker.retain(self._consumer.assignment)
            self._on_revoke(gone)  # their open work now belongs to another member
        if self._on_assign is not None and (fresh := self._consumer.take_fresh_assignments()):
            self._on_assign(fresh)  # before any record of those partitions is handled
        batch: list[Inbound] = []
        for rec in records:
            RECORDS.labels(self.service, rec.topic).inc()
            self._tracker.begin(rec.topic, rec.partition, rec.offset)
            try:
                batch.append(Inbound(rec, self._decoders[rec.topic](rec.value)))
            except MessageError as exc:
                self._dead_letter(rec, exc)
        if records:
            BATCH.labels(self.service).observe(len(records))
            self.stats.records += len(records)
        if batch:
            self._process(batch)
        for rec in records:
            self._finish(rec)
        ctx = Context()
        self._processor.tick(time.time() * 1000.0, ctx)
        self._apply(ctx)
        self._settle()
        return bool(records)

    def _process(self, batch: list[Inbound]) -> None:
        ctx = Context()
        try:
            self._processor.process(batch, ctx)
        except Exception:
            log.exception(
                "processor failed on a batch; retrying record by record",
                extra={"loop": self.service, "records": len(batch)},
            )
            for item in batch:
                one = Context()
                try:
                    self._processor.process([item], one)
                except Exception as exc:  # noqa: BLE001
                    self._dead_letter(item.record, exc)
                    continue
                self._apply(one)
            return
        self._apply(ctx)

    def _apply(self, ctx: Context) -> None:
        for rec in ctx.holds:
            if (ticket := self._ticket(rec)) is not None:
                self._tracker.add(ticket)
        for out in ctx.best_effort:  # first: a model's last delta goes out before its score
            self._send_best_effort(out)
        for out, sources in ctx.emits:
            self._send(out, sources)
        for rec in ctx.releases:
            if (ticket := self._ticket(rec)) is not None:
                self._tracker.done(ticket)

    def _ticket(self, rec: Record) -> Ticket | None:
        return self._tracker.get(rec.topic, rec.partition, rec.offset)

    def _send(
        self, out: Outbound, sources: Sequence[Record], tickets: Sequence[Ticket] | None = None
    ) -> None:
        """Produce ``out``; the sources' offsets wait for its acknowledgement."""
        if tickets is None:
            tickets = [t for rec in sources if (t := self._ticket(rec)) is not None]
        for ticket in tickets:
            self._tracker.add(ticket)

        def delivered(error: str | None) -> None:
            if error is None:
                for ticket in tickets:
                    self._tracker.done(ticket)
                return
            DELIVERY_FAILURES.labels(self.service).inc()
            if is_permanent(error) and sources:  # retrying cannot help: park the input
                self._undeliverable.append((out, sources[0], tickets, error))
            else:
                self._failures.append(f"{out.topic}: {error}")

        self._producer.produce(out, on_delivery=delivered)
        self.stats.produced += 1

    def _send_best_effort(self, out: Outbound) -> None:
        def delivered(error: str | None) -> None:
            if error is not None:
                BEST_EFFORT_LOST.labels(self.service).inc()

        try:
            self._producer.produce(out, on_delivery=delivered)
        except Exception as exc:  # noqa: BLE001 - e.g. a full queue, an unknown partition
            BEST_EFFORT_LOST.labels(self.service).inc()
            log.debug("best-effort output dropped", extra={"topic": out.topic, "error": str(exc)})
            return
        self.stats.produced += 1

    def _dead_letter(
        self, rec: Record, exc: Exception, tickets: Sequence[Ticket] | None = None
    ) -> None:
        DEAD_LETTERS.labels(self.service, rec.topic).inc()
        self.stats.dead_letters += 1
        log.warning(
            "record sent to dead letters",
            extra={
                "loop": self.service,
                "topic": rec.topic,
                "partition": rec.partition,
                "offset": rec.offset,
                "error": str(exc)[:500],
            },
        )
        self._send(dead_letter_for(rec, exc, self.service, self._dlq), [rec], tickets)

    def _finish(self, rec: Record) -> None:
        if (ticket := self._ticket(rec)) is not None:
            self._tracker.done(ticket)

    def _settle(self) -> None:
        """Serve delivery reports and store every offset that became committable."""
        self._producer.poll(0)
        parked, self._undeliverable = self._undeliverable, []
        for out, source, tickets, error in parked:  # e.g. a reply to a partition that
            where = f"{out.topic}[{'any' if out.partition is None else out.partition}]"
            self._dead_letter(  # does not exist: the input is parked, the loop goes on
                source,
                DeliveryError(f"its output to {where} cannot be delivered: {error}"),
                tickets,
            )
            for ticket in tickets:
                self._tracker.done(ticket)  # the dead letter now holds them
        if self._failures:
            raise DeliveryError(
                f"{len(self._failures)} outputs were not acknowledged, first: {self._failures[0]}"
            )
        self._tracker.retain(self._consumer.assignment)
        self._consumer.store_offsets(self._tracker.committable())

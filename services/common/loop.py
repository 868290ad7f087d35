"""The one poll loop every stream service runs: poll -> decode -> process -> produce ->
store offsets.

A record's offset is stored (and so committed) only after every output it caused was
acknowledged by the broker and no processor holds it open: at-least-once, never
at-most-once. No input stops the loop; the error contract, per record:

- **Undecodable** bytes go to the dead-letter topic with their origin.
- **A record the processor cannot use**: the processor handles each record inside
  ``with ctx.isolate(record):`` (or reports it with ``ctx.fail``). An exception in the
  block drops the effects (emits, holds, releases) recorded in it and dead-letters that
  record alone. The processor must leave its own state as if the record had not been
  seen: it validates before it mutates (or undoes what it changed before raising).
  Effects of the other records of the batch are applied as usual.
- **An exception escaping ``process``** (outside any isolate block) is a processor
  bug. The effects of the records whose isolate block finished are kept (their state
  changes happened); the effects recorded after the last finished block are dropped,
  and each record of the batch that was not finished is given to ``process`` again
  alone, then dead-lettered if it fails again. A stateless processor may therefore
  skip ``isolate``; a stateful one must not.
- **An exception escaping ``tick``** stops the loop (no record is to blame: a disk
  that cannot be written, a bug), uncommitted work is read again after a restart. A
  processor whose tick steps can fail one by one wraps each in ``isolate(None)``: a
  failing step is logged and its effects dropped (the rendezvous's decisions).
- **An output that cannot be produced**, refused on the spot (``ProduceError``) or
  failed in its delivery report, is classified:
  - permanent (``kafka.is_permanent``: unknown topic or partition, too large), or the
    cluster's metadata says its topic or partition does not exist (checked when a
    delivery fails otherwise, e.g. ``_MSG_TIMED_OUT``): its first source record is
    dead-lettered with the reason; its other outputs are unaffected. A dead letter
    that itself cannot be delivered is logged and counted, and its record released;
  - anything else (the broker unreachable, a full queue, a leader election): the
    output is produced again, for as long as it takes. Its offsets stay uncommitted
    meanwhile; nothing is dead-lettered and the process does not stop (a broker
    outage). A full local queue makes the loop wait, serving delivery reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from services.common.codec import encode, make_dead_letter, message_key
from services.common.errors import (
    BackpressureError,
    DeliveryError,
    KafkaUnavailableError,
    MessageError,
    ProduceError,
)
from services.common.kafka import Consumer, Lanes, Outbound, Producer, Record, is_permanent
from services.common.offsets import OffsetTracker, Ticket
from services.common.pacing import Pacer

log = logging.getLogger("rdv.loop")

RECORDS = Counter("rdv_stream_records_total", "Records consumed", ["service", "topic"])
DEAD_LETTERS = Counter(
    "rdv_stream_dead_letters_total", "Records sent to dead letters", ["service", "topic"]
)
DELIVERY_FAILURES = Counter(
    "rdv_stream_delivery_failures_total", "Outputs the broker did not acknowledge", ["service"]
)
DELIVERY_RETRIES = Counter(
    "rdv_stream_delivery_retries_total",
    "Outputs produced again after a failure that retrying can fix (broker away)",
    ["service"],
)
LETTERS_LOST = Counter(
    "rdv_stream_dead_letters_lost_total",
    "Dead letters (or outputs without a source) that can never be delivered",
    ["service"],
)
PROCESSOR_FAILURES = Counter(
    "rdv_stream_processor_failures_total",
    "Exceptions that escaped a processor's process() (bugs)",
    ["service"],
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

OLDEST_WAIT = Gauge(
    "rdv_stream_oldest_wait_seconds",
    "Per topic, how long the oldest record of the latest consumed batch had waited in "
    "Kafka when it was read: that moment minus the record's Kafka timestamp (producer "
    "clock). While the group lags, the age of the oldest record not yet consumed; 0 once "
    "a poll finds nothing waiting",
    ["service", "topic"],
)

Decoder = Callable[[bytes | None], Any]


@dataclass(frozen=True)
class Inbound:
    """A consumed record and its decoded message."""

    record: Record
    message: Any


Key = tuple[str, int, int]


def _key(rec: Record) -> Key:
    return (rec.topic, rec.partition, rec.offset)


@dataclass
class Context:
    """What a processor may do; effects apply only if its call returns normally, or
    (see the module's contract) if they were recorded in an isolate block that
    finished."""

    emits: list[tuple[Outbound, Sequence[Record]]] = field(default_factory=list)
    holds: list[Record] = field(default_factory=list)
    releases: list[Record] = field(default_factory=list)
    best_effort: list[Outbound] = field(default_factory=list)
    failures: list[tuple[Record, Exception]] = field(default_factory=list)
    finished: set[Key] = field(default_factory=set)  # records whose isolate block ended
    kept: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # effects up to the last one

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

    def fail(self, record: Record, error: Exception) -> None:
        """The processor cannot use ``record`` (and left its state as if it had not seen
        it): the loop sends it alone to dead letters with ``error``."""
        self.failures.append((record, error))

    @contextmanager
    def isolate(self, record: Record | None) -> Iterator[None]:
        """Handle one record (or, with None, one step of a tick) in the block. If the
        block raises, the effects it recorded are dropped, the exception is swallowed
        and the record is failed (dead-lettered); the processor's state must then be as
        before the block."""
        mark = self._mark()
        try:
            yield
        except Exception as exc:  # the contract: one record fails alone
            self._rollback(mark)
            if record is None:
                log.exception("a processor step failed; its effects were dropped")
            else:
                self.fail(record, exc)
        if record is not None:
            self.finished.add(_key(record))
        self.kept = self._mark()

    def keep_finished(self) -> None:
        """Drop the effects recorded after the last finished isolate block."""
        self._rollback(self.kept)

    def _mark(self) -> tuple[int, int, int, int, int]:
        return (
            len(self.emits),
            len(self.holds),
            len(self.releases),
            len(self.best_effort),
            len(self.failures),
        )

    def _rollback(self, mark: tuple[int, int, int, int, int]) -> None:
        del self.emits[mark[0] :]
        del self.holds[mark[1] :]
        del self.releases[mark[2] :]
        del self.best_effort[mark[3] :]
        del self.failures[mark[4] :]


class Processor(Protocol):
    """A service's logic. ``process`` gets each decoded batch, ``tick`` runs every turn.
    A stateful processor handles each record in ``ctx.isolate`` (the module's contract)."""

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
        producer: Producer | Lanes,
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
        metadata_timeout_s: float = 2.0,
        until_due: Callable[[], float | None] | None = None,
        idle_poll_s: float | None = None,
        paced: Mapping[str, float] | None = None,
    ) -> None:
        """``paced``: topics read in batches, at most once per so many seconds each
        (services.common.pacing); their partitions stay paused in between."""
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
        # Seconds until the processor's next timer (None: none); with it, a turn waits for
        # records until then (at most idle_poll_s), not poll_timeout_s: an idle loop does
        # not wake hundreds of times a second, and a timer fires when due.
        self._until_due = until_due
        self._idle_poll_s = poll_timeout_s if idle_poll_s is None else idle_poll_s
        self._failed: list[_Failed] = []  # delivery failures not classified yet
        self._metadata_timeout_s = metadata_timeout_s
        self._metadata_down_until = 0.0  # monotonic: the cluster did not answer lately
        self._stop = threading.Event()
        self.stats = RunStats()
        self.last_turn: float | None = None  # monotonic seconds of the latest turn
        self._waited: set[str] = set()  # topics whose OLDEST_WAIT is not 0
        self._pacer = Pacer(paced) if paced else None

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
        if self._pacer is not None:
            self._pace(self._pacer)
        records = self._consumer.consume(
            max_records, 0.0 if busy else self._wait_s(), 0.0 if busy else self._linger_s
        )
        if self._pacer is not None and records:
            self._pacer.read({rec.topic for rec in records})
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
        self._note_wait(records)
        if records:
            BATCH.labels(self.service).observe(len(records))
            self.stats.records += len(records)
        if batch:
            self._process(batch)
        for rec in records:
            self._finish(rec)
        ctx = Context()
        self._processor.tick(time.time() * 1000.0, ctx)  # raises: no input to blame
        self._apply(ctx)
        self._settle()
        return bool(records)

    def _note_wait(self, records: Sequence[Record]) -> None:
        """OLDEST_WAIT per topic of the batch (0 for every topic when none came)."""
        if not records:
            for topic in self._waited:
                OLDEST_WAIT.labels(self.service, topic).set(0.0)
            self._waited.clear()
            return
        oldest: dict[str, int] = {}
        for rec in records:  # a record without a timestamp (0 or -1) tells nothing
            if 0 < rec.timestamp_ms < oldest.get(rec.topic, rec.timestamp_ms + 1):
                oldest[rec.topic] = rec.timestamp_ms
        now_ms = time.time() * 1000.0
        for topic, stamp in oldest.items():
            OLDEST_WAIT.labels(self.service, topic).set(max(0.0, now_ms - stamp) / 1000.0)
            self._waited.add(topic)

    def _wait_s(self) -> float:
        """How long this turn waits for the first record (the consumer rounds a wait
        under 1 ms up: kafka.clients.client_timeout): until the processor's next timer or
        a paced topic's next read, whichever comes first."""
        if self._until_due is None:
            wait = self._poll_timeout_s
        else:
            due = self._until_due()
            wait = self._idle_poll_s if due is None else max(0.0, min(due, self._idle_poll_s))
        paced = None if self._pacer is None else self._pacer.until_next_s()
        return wait if paced is None else min(wait, paced)

    def _pace(self, pacer: Pacer) -> None:
        """Pause the paced topics' partitions while closed, resume them while open."""
        pacer.turn()
        closed = pacer.closed()
        mine = [tp for tp in self._consumer.assignment if tp[0] in pacer.topics]
        self._consumer.pause([tp for tp in mine if tp[0] in closed])
        self._consumer.resume([tp for tp in mine if tp[0] not in closed])

    def _process(self, batch: list[Inbound]) -> None:
        ctx = Context()
        try:
            self._processor.process(batch, ctx)
        except Exception:
            PROCESSOR_FAILURES.labels(self.service).inc()
            log.exception(
                "processor failed on a batch; records not finished are retried alone",
                extra={"loop": self.service, "records": len(batch)},
            )
            ctx.keep_finished()
            self._apply(ctx)
            for item in batch:
                if _key(item.record) in ctx.finished:
                    continue
                one = Context()
                try:
                    self._processor.process([item], one)
                except Exception as exc:  # noqa: BLE001
                    one.keep_finished()
                    self._apply(one)
                    if _key(item.record) not in one.finished:
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
        for rec, exc in ctx.failures:
            self._dead_letter(rec, exc)

    def _ticket(self, rec: Record) -> Ticket | None:
        return self._tracker.get(rec.topic, rec.partition, rec.offset)

    def _send(
        self,
        out: Outbound,
        sources: Sequence[Record],
        tickets: Sequence[Ticket] | None = None,
        *,
        letter: bool = False,
    ) -> None:
        """Produce ``out``; the sources' offsets wait for its acknowledgement."""
        if tickets is None:
            tickets = [t for rec in sources if (t := self._ticket(rec)) is not None]
        for ticket in tickets:
            self._tracker.add(ticket)
        self._produce(_Failed(out, tuple(sources), tuple(tickets), "", letter))

    def _produce(self, job: _Failed) -> None:
        """Queue ``job.out``; a failure (now or in its report) goes to ``_failed``."""

        def delivered(error: str | None) -> None:
            if error is None:
                for ticket in job.tickets:
                    self._tracker.done(ticket)
                return
            DELIVERY_FAILURES.labels(self.service).inc()
            self._failed.append(job.with_error(error))

        while True:
            try:
                self._producer.produce(job.out, on_delivery=delivered)
            except BackpressureError:  # the broker is slow or away: wait, never drop
                if self._stop.is_set():
                    log.warning("output left unsent at shutdown", extra={"topic": job.out.topic})
                    return  # its offsets stay uncommitted: read again after a restart
                self.last_turn = time.monotonic()  # waiting on the broker is not a stall
                self._producer.poll(0.1)
                continue
            except ProduceError as exc:
                DELIVERY_FAILURES.labels(self.service).inc()
                self._failed.append(job.with_error(exc.error))
                return
            self.stats.produced += 1
            return

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
        self._send(dead_letter_for(rec, exc, self.service, self._dlq), [rec], tickets, letter=True)

    def _finish(self, rec: Record) -> None:
        if (ticket := self._ticket(rec)) is not None:
            self._tracker.done(ticket)

    def _settle(self) -> None:
        """Serve delivery reports, deal with failed outputs, and store every offset that
        became committable."""
        self._producer.poll(0)
        failed, self._failed = self._failed, []
        checked: dict[tuple[str, int | None], str | None] = {}
        for job in failed:
            reason = self._permanent(job, checked)
            if reason is None:  # retrying can fix it: produce it again, same tickets
                DELIVERY_RETRIES.labels(self.service).inc()
                log.info(
                    "output produced again",
                    extra={"loop": self.service, "topic": job.out.topic, "error": job.error},
                )
                self._produce(job)
            elif job.letter or not job.sources:
                LETTERS_LOST.labels(self.service).inc()
                log.error(
                    "output can never be delivered; dropped",
                    extra={"loop": self.service, "topic": job.out.topic, "error": reason},
                )
                for ticket in job.tickets:
                    self._tracker.done(ticket)
            else:  # e.g. a reply to a partition that does not exist: park the input
                where = (
                    f"{job.out.topic}[{'any' if job.out.partition is None else job.out.partition}]"
                )
                self._dead_letter(
                    job.sources[0],
                    DeliveryError(f"its output to {where} cannot be delivered: {reason}"),
                    job.tickets,
                )
                for ticket in job.tickets:
                    self._tracker.done(ticket)  # the dead letter now holds them
        self._tracker.retain(self._consumer.assignment)
        self._consumer.store_offsets(self._tracker.committable())

    def _permanent(
        self, job: _Failed, checked: dict[tuple[str, int | None], str | None]
    ) -> str | None:
        """Why ``job`` can never be delivered, or None when producing it again may work.
        A failure that is not permanent by its name is checked against the cluster's
        metadata (a topic that does not exist times out rather than failing)."""
        if is_permanent(job.error):
            return job.error
        where = (job.out.topic, job.out.partition)
        if where not in checked:
            if time.monotonic() < self._metadata_down_until:
                return None  # the cluster did not answer a moment ago: just retry
            try:
                checked[where] = self._producer.missing(*where, self._metadata_timeout_s)
            except KafkaUnavailableError as exc:
                log.info("cluster metadata unavailable", extra={"error": str(exc)})
                self._metadata_down_until = time.monotonic() + 5.0
                return None
        missing = checked[where]
        return None if missing is None else f"{job.error} ({missing})"


@dataclass(frozen=True)
class _Failed:
    """An output, what waits for it, and (once failed) librdkafka's error."""

    out: Outbound
    sources: tuple[Record, ...]
    tickets: tuple[Ticket, ...]
    error: str
    letter: bool  # a dead letter: never dead-lettered in turn

    def with_error(self, error: str) -> _Failed:
        return _Failed(self.out, self.sources, self.tickets, error, self.letter)

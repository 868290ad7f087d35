"""The archive processor: every request, score, decision and feedback record becomes a row;
rows are buffered per kind and written as Parquet files when a bound is reached.

Offsets: every record is held (uncommitted) until the file holding its row is durable
(written, fsynced, renamed); records dropped as duplicates are held until the same
flush. A crash therefore loses no row: what was not durable is read again after the
restart, and rows written twice are removed by the query views (services.common.archive_files).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import pyarrow as pa

from services.archive import metrics
from services.archive.buffer import Buffer, Limits, RecentKeys
from services.archive.schema import (
    ROW_BUILDERS,
    Key,
    Row,
    dedup_key,
    record_ms,
    to_table,
)
from services.archive.store import HOUR_MS, PartStore, hour_of, partition_dir
from services.common.archive_files import DECISIONS, FEEDBACK, KINDS, REQUESTS, SCORES
from services.common.clock import mono_ms, wall_ms
from services.common.kafka import Record
from services.common.loop import Context, Inbound
from services.common.topics import Topics

log = logging.getLogger("rdv.archive")

Staged = tuple[str, Record, Key, Row | None, int]
"""A record of the batch: its kind, the record, its key, its row (None for a duplicate)
and its hour partition."""


class Archive:
    """A services.common.loop Processor over the requests, scores, decisions and feedback
    topics."""

    def __init__(
        self,
        *,
        topics: Topics,
        store: PartStore,
        limits: Limits,
        retention_hours: float,
        dedup_window: int,
        clock: Callable[[], float] = mono_ms,
        wall: Callable[[], float] = wall_ms,
    ) -> None:
        self.kinds = {
            topics.requests: REQUESTS,
            topics.scores: SCORES,
            topics.decisions: DECISIONS,
            topics.feedback: FEEDBACK,
        }
        self.store = store
        self.limits = limits
        self.retention_ms = retention_hours * HOUR_MS
        self.buffers = {kind: Buffer(kind) for kind in KINDS}
        self.seen = RecentKeys(dedup_window)
        self._clock = clock
        self._wall = wall
        self._draining = False
        self.on_drained: Callable[[], None] | None = None

    # -- the loop's hooks -------------------------------------------------------------

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        archived = int(self._wall())
        staged: list[Staged] = []
        fresh: set[Key] = set()
        for item in batch:  # build every row first: a failure leaves no trace
            rec = item.record
            kind = self.kinds[rec.topic]
            key = dedup_key(kind, item.message)
            hour = hour_of(record_ms(rec, archived))
            if key in self.seen or key in fresh:
                staged.append((kind, rec, key, None, hour))
                continue
            fresh.add(key)
            staged.append((kind, rec, key, ROW_BUILDERS[kind](item.message, rec, archived), hour))
        tables = self._tables(staged)
        now = self._clock()
        for kind, rec, key, maybe_row, _ in staged:
            ctx.hold(rec)
            if maybe_row is None:
                metrics.DUPLICATES.labels(kind).inc()
            else:
                self.seen.add(key)
            self.buffers[kind].add(rec, now)
        for (kind, hour), table in tables.items():
            self.buffers[kind].add_rows(hour, table)

    def _tables(self, staged: Sequence[Staged]) -> dict[tuple[str, int], pa.Table]:
        """The batch's new rows as Arrow tables per kind and hour partition, in arrival
        order; raises unless every row can be written.

        A value a message may hold but Arrow cannot store (a lone surrogate such as the
        JSON escape "\\ud800", an integer beyond int64) or a record stamped past the year
        9999 (no partition can name it) would otherwise fail at the flush, in ``tick``,
        where nothing dead-letters it: the record stays uncommitted and the archive fails
        again after every restart. Raised here, the loop retries the batch record by
        record and sends only the records that fail to the dead letters."""
        rows: dict[tuple[str, int], list[Row]] = {}
        for kind, _, _, row, hour in staged:
            if row is not None:
                rows.setdefault((kind, hour), []).append(row)
        for kind, hour in rows:
            partition_dir(self.store.root, kind, hour)
        return {(kind, hour): to_table(kind, part) for (kind, hour), part in rows.items()}

    def tick(self, now_ms: float, ctx: Context) -> None:
        now = self._clock()
        flushed = False
        for buf in self.buffers.values():
            if self._draining or buf.due(self.limits, now):
                flushed |= self._flush(buf, ctx)
            metrics.BUFFERED.labels(buf.kind).set(buf.row_count)
            metrics.BUFFERED_BYTES.labels(buf.kind).set(buf.bytes)
        if flushed:
            self.expire()
        if self._draining and self.on_drained is not None:
            self.on_drained()

    # -- flushing ---------------------------------------------------------------------

    def drain(self) -> None:
        """Write every buffer at the next tick, then call ``on_drained`` (the loop's stop):
        a clean stop commits everything it consumed. Safe from a signal handler."""
        self._draining = True

    def _flush(self, buf: Buffer, ctx: Context) -> bool:
        """Write ``buf``'s rows (files of at most max_rows rows, one hour partition each),
        then release its records."""
        if not buf.records:
            return False
        started = time.perf_counter()
        by_hour, records = buf.take()
        rows = 0
        step = self.limits.max_rows  # a batch may overshoot the bound: files never do
        for hour, table in sorted(by_hour.items()):
            for start in range(0, table.num_rows, step):
                self.store.write(buf.kind, hour, table.slice(start, step))
                metrics.FILES.labels(buf.kind).inc()
            rows += table.num_rows
        for rec in records:
            ctx.release(rec)
        metrics.ROWS.labels(buf.kind).inc(rows)
        metrics.FLUSH.labels(buf.kind).observe(time.perf_counter() - started)
        log.debug("flushed", extra={"kind": buf.kind, "rows": rows, "records": len(records)})
        return rows > 0

    def expire(self) -> None:
        """Delete the hour partitions older than the retention."""
        now = self._wall()
        for kind in KINDS:
            gone = self.store.expire(kind, now, self.retention_ms)
            if gone:
                metrics.EXPIRED.labels(kind).inc(len(gone))
                log.info("retention", extra={"kind": kind, "deleted": [str(p) for p in gone]})

"""What the archive holds in memory between flushes: rows per kind (Arrow tables), bounded, and the
records whose offsets wait for them; and the recent keys that spot redeliveries."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import pyarrow as pa

from services.common.kafka import Record


@dataclass(frozen=True)
class Limits:
    """When a kind's buffer is written out: the first bound reached."""

    max_rows: int
    max_bytes: int
    max_age_ms: float


@dataclass
class Buffer:
    """One kind's rows not yet written, as Arrow tables per hour partition in arrival
    order, and every record they stand for (duplicates included: their offsets too wait
    for the write)."""

    kind: str
    tables: dict[int, list[pa.Table]] = field(default_factory=dict)
    row_count: int = 0
    records: list[Record] = field(default_factory=list)
    bytes: int = 0
    since_ms: float | None = None  # monotonic time of the oldest record

    def add(self, rec: Record, now_ms: float) -> None:
        """Take in ``rec`` (its row, if it has one, comes with ``add_rows``)."""
        if self.since_ms is None:
            self.since_ms = now_ms
        self.records.append(rec)
        self.bytes += len(rec.value or b"")

    def add_rows(self, hour_ms: int, table: pa.Table) -> None:
        """Take in rows of the ``hour_ms`` partition, already converted."""
        self.tables.setdefault(hour_ms, []).append(table)
        self.row_count += table.num_rows

    def due(self, limits: Limits, now_ms: float) -> bool:
        return bool(self.records) and (
            self.row_count >= limits.max_rows
            or self.bytes >= limits.max_bytes
            or (self.since_ms is not None and now_ms - self.since_ms >= limits.max_age_ms)
        )

    def take(self) -> tuple[dict[int, pa.Table], list[Record]]:
        """Empty the buffer; returns its rows as one table per hour, and its records."""
        out = {hour: pa.concat_tables(parts) for hour, parts in self.tables.items()}
        records = self.records
        self.tables, self.row_count, self.records = {}, 0, []
        self.bytes, self.since_ms = 0, None
        return out, records


class RecentKeys:
    """The last ``capacity`` keys seen, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """Remember ``key``; False when it was already remembered."""
        if key in self._keys:
            return False
        if self.capacity > 0:
            self._keys[key] = None
            if len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        return True

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

"""What the archive holds in memory between flushes: rows per kind, bounded, and the
records whose offsets wait for them; and the recent keys that spot redeliveries."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from services.archive.schema import Row
from services.common.kafka import Record


@dataclass(frozen=True)
class Limits:
    """When a kind's buffer is written out: the first bound reached."""

    max_rows: int
    max_bytes: int
    max_age_ms: float


@dataclass
class Buffer:
    """One kind's rows not yet written, and every record they stand for (duplicates
    included: their offsets too wait for the write)."""

    kind: str
    rows: list[Row] = field(default_factory=list)
    hours: list[int] = field(default_factory=list)  # the hour partition of each row
    records: list[Record] = field(default_factory=list)
    bytes: int = 0
    since_ms: float | None = None  # monotonic time of the oldest record

    def add(self, rec: Record, row: Row | None, hour_ms: int, now_ms: float) -> None:
        """Take in ``rec``; ``row`` None for a duplicate (its offset still waits)."""
        if self.since_ms is None:
            self.since_ms = now_ms
        self.records.append(rec)
        self.bytes += len(rec.value or b"")
        if row is not None:
            self.rows.append(row)
            self.hours.append(hour_ms)

    def due(self, limits: Limits, now_ms: float) -> bool:
        return bool(self.records) and (
            len(self.rows) >= limits.max_rows
            or self.bytes >= limits.max_bytes
            or (self.since_ms is not None and now_ms - self.since_ms >= limits.max_age_ms)
        )

    def by_hour(self) -> dict[int, list[Row]]:
        """The rows grouped by hour partition, in arrival order."""
        if len(set(self.hours)) == 1:
            return {self.hours[0]: self.rows}
        out: dict[int, list[Row]] = {}
        for hour, row in zip(self.hours, self.rows, strict=True):
            out.setdefault(hour, []).append(row)
        return out

    def take(self) -> tuple[dict[int, list[Row]], list[Record]]:
        """Empty the buffer; returns its rows by hour and its records."""
        out = (self.by_hour(), self.records)
        self.rows, self.hours, self.records = [], [], []
        self.bytes, self.since_ms = 0, None
        return out


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

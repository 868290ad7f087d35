"""Parquet files on local disk, partitioned by kind and hour, written durably.

Layout: ``<root>/<kind>/date=YYYY-MM-DD/hour=HH/part-<ms>-<uuid>.parquet`` (UTC). A
file is written under a hidden temporary name, fsynced, renamed into place and its
directory fsynced: once ``write`` returns, the file survives a crash or power loss,
and a reader never sees a half-written file (readers glob ``*.parquet``; temporary
names end in ``.tmp``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from services.common.clock import wall_ms

log = logging.getLogger("rdv.archive")

HOUR_MS = 3_600_000
_DATE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_HOUR = re.compile(r"^hour=(\d{2})$")


def hour_of(epoch_ms: int) -> int:
    """The hour (epoch ms at its start) that ``epoch_ms`` falls in."""
    return epoch_ms - epoch_ms % HOUR_MS


def partition_dir(root: Path, kind: str, hour_ms: int) -> Path:
    at = datetime.fromtimestamp(hour_ms / 1000, tz=UTC)
    return root / kind / f"date={at:%Y-%m-%d}" / f"hour={at:%H}"


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file's data, or a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """mkdir -p, fsyncing the parent of every directory created (so the new entries
    themselves are durable, not only the files later put in them)."""
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        at = at.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync(d.parent)


def _hour_ms(date: str, hour: str) -> int | None:
    """Epoch ms of ``date`` (YYYY-MM-DD) at ``hour`` (HH), UTC; None if no such hour."""
    try:
        at = datetime.strptime(f"{date} {hour}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(at.timestamp() * 1000)


class PartStore:
    """Writes and expires the Parquet files of one archive root."""

    def __init__(self, root: Path, compression: str = "zstd") -> None:
        self.root = root
        self.compression = compression
        self._seq = 0

    def write(self, kind: str, hour_ms: int, table: pa.Table) -> Path:
        """Write ``table`` as a new file of ``kind``'s ``hour_ms`` partition, durably."""
        folder = partition_dir(self.root, kind, hour_ms)
        _make_dirs(folder)
        self._seq += 1
        name = f"part-{int(wall_ms())}-{self._seq}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(table, tmp, compression=self.compression)
            _fsync(tmp)
            os.replace(tmp, folder / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync(folder)
        return folder / name

    def partitions(self, kind: str) -> list[tuple[int, Path]]:
        """(hour start in epoch ms, directory) of every hour partition of ``kind``.
        Directories whose names are no date and hour (``hour=24``, ``date=2026-13-40``)
        are skipped with a warning: not this store's, they must not stop it."""
        out: list[tuple[int, Path]] = []
        base = self.root / kind
        if not base.is_dir():
            return out
        for date_dir in base.iterdir():
            if not (m := _DATE.match(date_dir.name)) or not date_dir.is_dir():
                continue
            for hour_dir in date_dir.iterdir():
                if not (h := _HOUR.match(hour_dir.name)) or not hour_dir.is_dir():
                    continue
                if (hour_ms := _hour_ms(m[1], h[1])) is None:
                    log.warning("not an hour partition: skipped", extra={"dir": str(hour_dir)})
                    continue
                out.append((hour_ms, hour_dir))
        return sorted(out)

    def expire(self, kind: str, now_ms: float, retention_ms: float) -> list[Path]:
        """Delete the hour partitions of ``kind`` that ended before ``now - retention``
        (and date directories left empty); returns the hour directories deleted."""
        gone: list[Path] = []
        for hour_ms, folder in self.partitions(kind):
            if hour_ms + HOUR_MS <= now_ms - retention_ms:
                shutil.rmtree(folder)
                gone.append(folder)
        for parent in {p.parent for p in gone}:
            if not any(parent.iterdir()):
                parent.rmdir()
        return gone

    def remove_temporaries(self) -> int:
        """Delete the temporary files a killed writer left behind; returns how many."""
        count = 0
        if self.root.is_dir():
            for tmp in self.root.glob("*/date=*/hour=*/.part-*.parquet.tmp"):
                tmp.unlink(missing_ok=True)
                count += 1
        return count

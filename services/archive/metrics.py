"""The archive's Prometheus metrics (prefix ``rdv_archive_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS = Counter("rdv_archive_rows_total", "Rows written durably to Parquet", ["kind"])
FILES = Counter("rdv_archive_files_total", "Parquet files written", ["kind"])
FLUSH = Histogram(
    "rdv_archive_flush_seconds",
    "Time to write, fsync and rename one flush of a kind's buffer",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DUPLICATES = Counter(
    "rdv_archive_duplicates_total", "Records dropped as seen before in this run", ["kind"]
)
BUFFERED = Gauge("rdv_archive_buffered_rows", "Rows waiting in memory for a flush", ["kind"])
BUFFERED_BYTES = Gauge(
    "rdv_archive_buffered_bytes", "Record value bytes waiting in memory for a flush", ["kind"]
)
EXPIRED = Counter(
    "rdv_archive_expired_partitions_total", "Hour partitions deleted by retention", ["kind"]
)

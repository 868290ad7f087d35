"""The archive's settings (env prefix ``RDV_ARCHIVE_``); Kafka's are KafkaSettings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[2]


class ArchiveSettings(BaseSettings):
    """How the archive process runs."""

    model_config = SettingsConfigDict(env_prefix="RDV_ARCHIVE_", extra="forbid")

    dir: Path = REPO / ".rdv" / "archive"
    """Root of the Parquet files: <dir>/<kind>/date=YYYY-MM-DD/hour=HH/part-*.parquet."""

    retention_hours: float = Field(default=168.0, gt=0)
    """Hour partitions that ended longer ago than this are deleted (checked at each flush)."""

    max_rows: int = Field(default=50_000, ge=1)
    """A kind's buffer is written to a new file once it holds this many rows."""

    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """... or once its records' values add up to this many bytes (bounds memory)."""

    max_age_s: float = Field(default=5.0, gt=0)
    """... or once its oldest record waited this long (offsets commit only after)."""

    dedup_window: int = Field(default=200_000, ge=0)
    """How many recent keys (kind, request id, and the model for scores or the time it
    was received for feedback) are remembered to drop records delivered again within a
    run; the query views deduplicate across restarts."""

    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    """Parquet compression codec."""

    group_id: str = "rdv.archive"
    """Consumer group of the archive; the Kafka topic prefix is prepended."""

    auto_offset_reset: Literal["latest", "earliest"] = "earliest"
    """Where a new group starts: "earliest" records everything the topics still hold.
    A group with committed offsets always resumes from them."""

    fetch_min_bytes: int = Field(default=256 * 1024, ge=1)
    """The broker answers the archive's fetches once this much is there (or after
    fetch_wait_max_ms): few large fetches, not one per record, so recording costs the
    broker (the busiest process of the stack) little."""

    fetch_wait_max_ms: int = Field(default=500, ge=1, le=10_000)
    """Longest a fetch waits for fetch_min_bytes."""

    topics_file: Path | None = None
    """The topics file; default the repo's deploy/kafka/topics.yaml."""

    ops_host: str = "127.0.0.1"
    """Interface of the /healthz, /readyz and /metrics server."""

    ops_port: int = Field(default=9400, ge=0, le=65535)
    """Port of the ops server (0 picks a free one)."""

    batch_size: int = Field(default=2000, ge=1, le=100_000)
    """Most records handled per loop turn."""

    poll_ms: float = Field(default=100.0, gt=0, le=1000)
    """Longest wait for records in one turn: age-based flushes happen at most this late."""

    flush_timeout_s: float = Field(default=10.0, gt=0)
    """How long to wait at shutdown for dead letters in flight."""

    nice: int = Field(default=10, ge=0, le=19)
    """Added to the process's nice value at start, so that on a shared host the recorder
    yields the CPU to the request path (it is not latency-critical: records wait in
    Kafka until it reads them)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the JSON logs on stderr."""

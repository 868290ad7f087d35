"""The worker's settings (env prefix ``RDV_WORKER_``); Kafka's are ``KafkaSettings``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """How one model worker process runs (the model itself is its spec)."""

    model_config = SettingsConfigDict(env_prefix="RDV_WORKER_", extra="forbid")

    model: str | None = None
    """The model spec: a YAML/JSON file or the inline form ``runtime:key=value,...``
    (see services.common.spec). ``--model`` wins over it."""

    cohosted: list[str] = Field(default_factory=list)
    """More model specs served by the same process from the same consumer (a JSON list
    in RDV_WORKER_COHOSTED; the CLI's further ``--model`` flags): each request is read
    once and every model scores it in turn (services.workers.cohost). For fast models;
    a generative one is refused."""

    ops_host: str = "127.0.0.1"
    """Interface of the /healthz, /readyz and /metrics server (0.0.0.0 in a container)."""

    ops_port: int = Field(default=0, ge=0, le=65535)
    """Port of the ops server; 0 picks a free one (logged as "ops server listening"),
    so several workers can share a host."""

    topics_file: Path | None = None
    """The topics file; default the repo's deploy/kafka/topics.yaml."""

    auto_offset_reset: Literal["latest", "earliest"] = "latest"
    """Where a model's new consumer group starts: "latest" scores requests from now
    on (a model joining a live stream), "earliest" also scores what the topic holds.
    A group with committed offsets always resumes from them."""

    score_expired: bool = False
    """Score requests whose deadline has passed instead of skipping them: for a new
    challenger backfilling from the requests topic (with auto_offset_reset "earliest")
    to be compared on past traffic. Its late scores answer nobody."""

    off_path_wait_ms: int = Field(default=500, ge=0, le=5000)
    """A model whose answers never answer a client (role canary or decoy) reads requests
    in batches: the broker answers its fetch when 64 KiB have arrived or after this
    long, and its scores leave in batches too (lingering up to a tenth of it). Fewer
    Kafka requests and fewer wake-ups per request; its scores arrive up to this much
    later, which nobody waits for. 0: read and write at once, as answering models do."""

    cohost_linger_ms: float = Field(default=1.0, ge=0, le=100)
    """A process hosting several answering models sends a request's scores together, in
    one Kafka produce request: as soon as one score per hosted model is queued for a
    partition (librdkafka's batch.num.messages), else after this long (a model that
    skipped or was not sampled). Sent one by one, the first often leaves alone while
    the others are queued (docs/benchmarks.md). 0: each at once."""

    startup_timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for the broker to create and confirm the topics at start."""

    flush_timeout_s: float = Field(default=10.0, gt=0)
    """How long to wait at shutdown for scores still in flight."""

    idle_poll_ms: float = Field(default=250.0, gt=0, le=5000)
    """How long one turn of the loop waits for a request when none is waiting. A
    request ends the wait at once, so this bounds only how late an idle worker ticks
    (lag gauge, health): a short wait only wakes an idle process more often."""

    lag_interval_s: float = Field(default=1.0, gt=0)
    """How often the consumer-lag gauge is refreshed."""

    stall_timeout_s: float = Field(default=120.0, gt=0)
    """/healthz fails when the loop has not turned for this long (a hung model); keep it
    above the slowest batch the model may take."""

    nice: int = Field(default=0, ge=0, le=19)
    """Added to the nice value of the thread that loads and runs the model (and of the
    threads it starts) before the model loads: a challenger or shadow that shares cores
    with the champion yields them to it (bench.chat_e2e measures it). 0: unchanged."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the JSON logs on stderr."""

"""The compare service's settings (env prefix ``RDV_COMPARE_``); Kafka's (KafkaSettings) only
for the learner."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[2]


class CompareSettings(BaseSettings):
    """How the compare process (experiments over HTTP, the drift monitor) runs."""

    model_config = SettingsConfigDict(env_prefix="RDV_COMPARE_", extra="forbid")

    archive_dir: Path = REPO / ".rdv" / "archive"
    """The archive's Parquet files (what the archive service writes: RDV_ARCHIVE_DIR);
    only read. /readyz answers 200 once this folder exists."""

    policies: Path | None = REPO / "deploy" / "policies"
    """Endpoint policy files, for compare's "would be chosen under the policy files'
    policy" (the files, not the policy a control-topic change may have put in force)."""

    drift_interval_s: float = Field(default=60.0, gt=0)
    """How often the drift gauges (rdv_compare_drift_*) are recomputed."""

    drift_window_s: float = Field(default=900.0, gt=0)
    """The recent window whose canary and detector outputs are compared..."""

    drift_reference_s: float = Field(default=3600.0, gt=0)
    """...with this long a reference window just before it."""

    learn_interval_s: float = Field(default=2.0, ge=0)
    """How often the learner folds new feedback into the bandit's rewards and publishes
    them on the control topic (services.compare.learner); 0 turns it off (then the
    process needs no Kafka)."""

    ops_host: str = "127.0.0.1"
    """Interface of the HTTP server (/v1/experiments/compare, /healthz, /readyz, /metrics)."""

    ops_port: int = Field(default=9410, ge=0, le=65535)
    """Port of that server (0 picks a free one)."""

    nice: int = Field(default=10, ge=0, le=19)
    """Added to the process's nice value at start: reports and drift checks scan Parquet
    files and should yield the CPU to the request path on a shared host."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the JSON logs on stderr."""

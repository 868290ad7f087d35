"""Models shipped with the repo for demos, tests and benchmarks (no ML inside).

``echo``
    Returns each payload unchanged after ``latency_ms`` per batch (default 0).
``latency``
    An echo with a latency profile: each request takes ``latency_ms`` plus a uniform
    ``0..jitter_ms``, except a ``slow_share`` of requests that take ``slow_ms``; a
    batch takes as long as its slowest request (as a padded batch would). With a
    ``seed`` the draws are the same on every run.
``failing``
    Fails every batch with ``message`` (after ``latency_ms``).

The simulated compute is a ``time.sleep``: it is the model's work, as a GPU kernel's
would be, and blocks the worker's loop exactly as a real model does.
"""

from __future__ import annotations

import random
import time

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from services.workers.runtime import (
    ModelRuntime,
    Params,
    Prediction,
    PredictionError,
    parse_params,
)

MAX_MS = 600_000.0


class EchoParams(BaseModel):
    """Params of ``echo``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0.0, le=MAX_MS)


class LatencyParams(EchoParams):
    """Params of ``latency``."""

    jitter_ms: float = Field(default=0.0, ge=0.0, le=MAX_MS)
    slow_share: float = Field(default=0.0, ge=0.0, le=1.0)
    slow_ms: float = Field(default=0.0, ge=0.0, le=MAX_MS)
    seed: int | None = None


class FailingParams(EchoParams):
    """Params of ``failing``."""

    message: str = Field(default="this model fails on purpose", min_length=1)


class LatencyModel(ModelRuntime):
    """Echoes payloads after a simulated, optionally jittery, compute time."""

    runtime = "latency"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.profile = self._profile(params)
        self._rng = random.Random(self.profile.seed)  # noqa: S311 - simulation, not crypto

    def _profile(self, params: Params) -> LatencyParams:
        return parse_params(LatencyParams, params, self.runtime)

    def draw_ms(self) -> float:
        """The simulated compute time of one request."""
        p = self.profile
        if p.slow_share and self._rng.random() < p.slow_share:
            return p.slow_ms
        return p.latency_ms + (self._rng.uniform(0.0, p.jitter_ms) if p.jitter_ms else 0.0)

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        delay_ms = max((self.draw_ms() for _ in payloads), default=0.0)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000.0)
        return list(payloads)


class EchoModel(LatencyModel):
    """Echoes payloads after a fixed ``latency_ms`` per batch."""

    runtime = "echo"

    def _profile(self, params: Params) -> LatencyParams:
        echo = parse_params(EchoParams, params, self.runtime)
        return LatencyParams(latency_ms=echo.latency_ms)


class FailingModel(ModelRuntime):
    """Fails every batch: the stand-in for a crashing model."""

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.config = parse_params(FailingParams, params, "failing")

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        if self.config.latency_ms > 0:
            time.sleep(self.config.latency_ms / 1000.0)
        raise PredictionError(self.config.message)

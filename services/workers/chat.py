"""The generative worker: continuous batching over the stream.

``ChatWorker`` is a ``ModelWorker`` whose model generates token by token. A request is
submitted to the model's batching engine when it arrives and its record is held; every
loop turn runs one engine step (one batched forward pass), so a request that arrives
while others generate joins the running batch at the next step. A finished answer
becomes an ``ok`` score and releases its record. A request whose deadline can no
longer be met is cut (finish reason ``deadline``) a margin before the deadline, so its
partial answer still reaches the rendezvous in time.
"""

from __future__ import annotations

import time
from typing import Any

from services.common.clock import wall_ms
from services.common.kafka import Record
from services.common.loop import Context
from services.common.messages import RequestEnvelope, ScoreStatus, Timings
from services.workers.chat_runtime import ChatRuntime, messages, output_of, parse_payload
from services.workers.metrics import (
    BATCH_SIZE,
    FINISHED,
    PREDICT_SECONDS,
    TOKENS,
    TOKENS_PER_S,
    TTFT,
)
from services.workers.worker import ModelWorker, describe


class ChatWorker(ModelWorker):
    """Submits requests to the engine as they come; emits answers as they finish."""

    model: ChatRuntime

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, tuple[Record, RequestEnvelope, float, float]] = {}

    @property
    def busy(self) -> bool:
        """The engine has requests to run: the loop must not block on its consumer."""
        return bool(self._pending)

    def _predict(
        self, live: list[tuple[Record, RequestEnvelope]], received: float, ctx: Context
    ) -> None:
        for record, req in live:
            started = max(self._clock(), received)
            try:
                payload = parse_payload(req.payload)
                left_s = req.deadline_ms - wall_ms() - self.model.config.deadline_margin_ms
                self.model.chat.submit(
                    messages(payload),
                    self.model.sampling(payload),
                    deadline=time.monotonic() + left_s / 1000.0,
                    request_id=req.request_id,
                )
            except Exception as exc:  # noqa: BLE001 - the stream edge: a failure is a score
                timings = Timings(received_ms=received, started_ms=started, finished_ms=started)
                self._emit(
                    ctx, record, self._score(req, ScoreStatus.ERROR, timings, error=describe(exc))
                )
                continue
            ctx.hold(record)  # until its answer is produced
            self._pending[req.request_id] = (record, req, received, started)

    def tick(self, now_ms: float, ctx: Context) -> None:
        super().tick(now_ms, ctx)
        if not self._pending:
            return
        BATCH_SIZE.labels(self.spec.name).observe(len(self._pending))
        t0 = time.perf_counter()
        try:
            results = self.model.chat.step()
        except Exception as exc:  # noqa: BLE001 - every running request gets the error
            self._fail_all(ctx, exc)
            return
        PREDICT_SECONDS.labels(self.spec.name).observe(time.perf_counter() - t0)
        finished = self._clock()
        for result in results:
            entry = self._pending.pop(result.request_id, None)
            if entry is None:
                continue
            record, req, received, started = entry
            self._observe(result)
            timings = Timings(
                received_ms=received, started_ms=started, finished_ms=max(finished, started)
            )
            self._emit(ctx, record, self._result(req, output_of(result), timings))
            ctx.release(record)

    def _observe(self, result: Any) -> None:
        name = self.spec.name
        TOKENS.labels(name, "prompt").inc(result.prompt_tokens)
        TOKENS.labels(name, "completion").inc(result.completion_tokens)
        FINISHED.labels(name, result.finish_reason).inc()
        if result.ttft_s is not None:
            TTFT.labels(name).observe(result.ttft_s)
        TOKENS_PER_S.labels(name).observe(result.tokens_per_s)

    def _fail_all(self, ctx: Context, exc: BaseException) -> None:
        """A step failed: the engine's state is unknown, so every request fails now."""
        finished = self._clock()
        for record, req, received, started in self._pending.values():
            timings = Timings(
                received_ms=received, started_ms=started, finished_ms=max(finished, started)
            )
            self._emit(
                ctx, record, self._score(req, ScoreStatus.ERROR, timings, error=describe(exc))
            )
            ctx.release(record)
        self._pending.clear()
        self.model.unload()
        self.model.load()  # a fresh engine

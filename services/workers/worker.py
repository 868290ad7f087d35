"""The worker's stream logic: score each micro-batch of requests with one model.

``ModelWorker`` is a ``services.common.loop.Processor``: the runner takes the first
waiting request at once and then more for up to ``batch.max_wait_ms`` (at most
``batch.max_size``): that is the batch window, and each batch is one ``predict_batch``
call (0 ms: whatever has queued up, so batches grow with load and cost nothing idle).
Per request of the batch:

- another endpoint's request is ignored (no score; its offset still commits);
- a request outside the model's sample (spec ``sample`` < 1: services.common.sampling)
  is not predicted and gets a ``skipped`` score with error code ``not_sampled`` at once;
- a request whose deadline had passed when the batch was consumed is not predicted
  and gets a ``skipped`` score in the same turn;
- a ``PredictionError`` (or any exception) returned in place of one output becomes an
  ``error`` score for that request only;
- an exception raised by ``predict_batch`` becomes an ``error`` score for every
  request of the batch, so the rendezvous need not wait for the deadline;
- otherwise the output becomes an ``ok`` score.

A request delivered again (a rebalance, a restart, a duplicate record) is scored again
like any other: the worker keeps no state per request, and the rendezvous keeps the
first score of each model. It never becomes an error score. (The chat worker, whose
requests stay in its engine across turns, holds a redelivered one instead.)

Every score goes to the scores topic keyed by request id, emitted with the request's
record as ``source``: its offset commits only once the broker acknowledged the score.
Timings: received = batch consumed, started/finished = around ``predict_batch``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from pydantic import JsonValue, ValidationError

from services.common import tracing
from services.common.clock import mono_ms, wall_ms
from services.common.codec import MAX_ERROR_CHARS, encode, message_key
from services.common.errors import RendezvousError
from services.common.kafka import Outbound, Record
from services.common.loop import Context, Inbound
from services.common.messages import (
    MODEL_ERROR,
    REPLAY_MODEL,
    ErrorBody,
    RequestEnvelope,
    Score,
    ScoreStatus,
    Timings,
)
from services.common.sampling import in_sample, not_sampled_error
from services.common.spec import ModelSpec
from services.workers.metrics import (
    BATCH_MAX,
    BATCH_SIZE,
    DEADLINE_LEFT,
    ERRORS,
    IN_FLIGHT,
    PREDICT_SECONDS,
    SCORED,
    SKIPPED,
    LagGauge,
)
from services.workers.runtime import ModelRuntime, Prediction, PredictionError

log = logging.getLogger("rdv.worker")

LagSource = Callable[[], Mapping[tuple[str, int], int]]
"""Returns (topic, partition) -> records not yet read (``Consumer.lag``)."""

WallClock = Callable[[], float]
"""Returns epoch milliseconds (``services.common.clock.wall_ms``; tests pass a fake)."""

_COUNTERS = {ScoreStatus.OK: SCORED, ScoreStatus.ERROR: ERRORS, ScoreStatus.SKIPPED: SKIPPED}

INVALID_OUTPUT = "invalid_output"
"""A score's error code when the model's output is not a JSON value."""


def describe(exc: BaseException) -> ErrorBody:
    """An exception as a score's error: the platform's errors keep their code (the
    rendezvous reads it, e.g. a client error's); anything else is a ``model_error``
    naming the exception's type."""
    if isinstance(exc, RendezvousError):
        code, text = exc.code, exc.message
    else:
        code, text = MODEL_ERROR, f"{type(exc).__name__}: {exc}"
    return ErrorBody(code=code, message=text[:MAX_ERROR_CHARS])


class ModelWorker:
    """Scores every request of the spec's endpoints with one loaded model."""

    def __init__(
        self,
        spec: ModelSpec,
        model: ModelRuntime,
        scores_topic: str,
        *,
        lag: LagSource | None = None,
        lag_interval_ms: float = 1000.0,
        clock: WallClock = wall_ms,
        score_expired: bool = False,
    ) -> None:
        self.spec = spec
        self.score_expired = score_expired  # backfill: score requests past their deadline
        self.model = model
        self._topic = scores_topic
        self._endpoints = frozenset(spec.endpoints)
        self._lag = lag
        self._lag_gauge = LagGauge(spec.name)
        BATCH_MAX.labels(spec.name).set(spec.batch.max_size)
        self._lag_interval_ms = lag_interval_ms
        self._lag_at = float("-inf")
        self._clock = clock  # epoch ms: deadlines and timings cross processes
        self.last_tick_mono_ms: float | None = None

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        received = self._clock()
        self._note_budget(batch, received)
        live: list[tuple[Record, RequestEnvelope]] = []
        for item in batch:
            req: RequestEnvelope = item.message
            if req.endpoint not in self._endpoints:
                continue
            target = req.attributes.get(REPLAY_MODEL)
            if target is not None and target != self.spec.name:
                continue  # a replay meant for another model only
            # a replay aimed at this model is scored whatever the sample
            sampled = target is not None or in_sample(
                self.spec.name, req.request_id, self.spec.sample
            )
            if not sampled or (req.deadline_epoch_ms <= received and not self.score_expired):
                timings = Timings(received_ms=received, started_ms=received, finished_ms=received)
                error = None if sampled else not_sampled_error(self.spec.sample)
                skipped = self._score(req, ScoreStatus.SKIPPED, timings, error=error)
                self._emit(ctx, item.record, skipped)
            else:
                live.append((item.record, req))
        if live:
            self._predict(live, received, ctx)

    def tick(self, now_ms: float, ctx: Context) -> None:
        self.last_tick_mono_ms = mono_ms()
        if self._lag is not None and now_ms - self._lag_at >= self._lag_interval_ms:
            self._lag_at = now_ms
            self._lag_gauge.publish(self._lag())

    def _note_budget(self, batch: Sequence[Inbound], received: float) -> None:
        """The deadline budget left of the batch's most urgent request of this model."""
        deadlines = [
            item.message.deadline_epoch_ms
            for item in batch
            if item.message.endpoint in self._endpoints
        ]
        if deadlines:
            DEADLINE_LEFT.labels(self.spec.name).set((min(deadlines) - received) / 1000.0)

    def _predict(
        self, live: list[tuple[Record, RequestEnvelope]], received: float, ctx: Context
    ) -> None:
        BATCH_SIZE.labels(self.spec.name).observe(len(live))
        started = max(self._clock(), received)  # never out of order if the wall clock steps
        t0 = time.perf_counter()
        IN_FLIGHT.labels(self.spec.name).set(len(live))
        outputs = self._call_model([req.payload for _, req in live])
        IN_FLIGHT.labels(self.spec.name).set(0)
        PREDICT_SECONDS.labels(self.spec.name).observe(time.perf_counter() - t0)
        finished = max(self._clock(), started)
        timings = Timings(received_ms=received, started_ms=started, finished_ms=finished)
        for (record, req), out in zip(live, outputs, strict=True):
            self._emit(ctx, record, self._result(req, out, timings))

    def _call_model(self, payloads: list[JsonValue]) -> list[Prediction | BaseException]:
        """The model's answers, one per payload; a failing batch fails each payload."""
        try:
            outputs: list[Prediction | BaseException] = list(self.model.predict_batch(payloads))
            if len(outputs) != len(payloads):
                raise PredictionError(
                    f"runtime returned {len(outputs)} outputs for {len(payloads)} requests"
                )
        except Exception as exc:  # noqa: BLE001 - the stream edge: a model failure is a score
            error = describe(exc)
            log.warning(
                "model failed on a batch",
                extra={
                    "model": self.spec.name,
                    "requests": len(payloads),
                    "code": error.code,
                    "error": error.message,
                },
            )
            return [exc] * len(payloads)
        return outputs

    def _result(
        self, req: RequestEnvelope, out: Prediction | BaseException, timings: Timings
    ) -> Score:
        if isinstance(out, BaseException):
            return self._score(req, ScoreStatus.ERROR, timings, error=describe(out))
        try:
            return self._score(req, ScoreStatus.OK, timings, output=out)
        except ValidationError as exc:
            reason = f"the model's output is not valid JSON: {exc.errors()[0]['msg']}"
            error = ErrorBody(code=INVALID_OUTPUT, message=reason)
            return self._score(req, ScoreStatus.ERROR, timings, error=error)

    def _score(
        self,
        req: RequestEnvelope,
        status: ScoreStatus,
        timings: Timings,
        *,
        output: JsonValue = None,
        error: ErrorBody | None = None,
    ) -> Score:
        return Score(
            request_id=req.request_id,
            endpoint=req.endpoint,
            model=self.spec.name,
            model_version=self.spec.version,
            role=self.spec.role,
            status=status,
            output=output,
            error=error,
            timings=timings,
            request=req.header(),
        )

    def _emit(self, ctx: Context, record: Record, score: Score) -> None:
        headers: tuple[tuple[str, bytes], ...] = ()
        if tracing.enabled():
            headers = tracing.score_span(record, score)
            if score.request is not None and (parent := tracing.traceparent_of(record)):
                copy = score.request.model_copy(update={"traceparent": parent})
                score = score.model_copy(update={"request": copy})
        out = Outbound(self._topic, message_key(score), encode(score), headers)
        ctx.emit(out, source=record)
        _COUNTERS[score.status].labels(self.spec.name).inc()

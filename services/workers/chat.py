"""The generative worker: continuous batching over the stream.

``ChatWorker`` is a ``ModelWorker`` whose model generates token by token. A request is
submitted to the model's batching engine when it arrives and its record is held; every
loop turn runs one engine step (one batched forward pass), so a request that arrives
while others generate joins the running batch at the next step. A finished answer
becomes an ``ok`` score and releases its record. A request whose deadline can no
longer be met is cut (finish reason ``deadline``) a margin before the deadline, so its
partial answer still reaches the rendezvous in time.

A request whose payload has ``stream`` true also gets a ``Delta`` after every step
that added text to its answer, sent to its return address (best effort: no offset
waits for it, and the score stays the source of truth). A delta carries the new text
of the decoded answer so far (``BatchEngine.partial_texts``: a character split over
tokens, or a possible start of a stop string, waits for the next step); the last
one, sent with the score, carries the rest and the finish reason.

A request delivered again while it is in the engine (a rebalance, a restart, a
duplicate record) is held, not submitted again nor failed: the record read again at
the same position takes the place of the first (the loop forgot that one's offset), a
record at another position waits with it; the one score releases them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from services.common.codec import encode, message_key
from services.common.kafka import Outbound, Record
from services.common.loop import Context
from services.common.messages import (
    Delta,
    ErrorBody,
    RequestEnvelope,
    ReturnAddress,
    ScoreStatus,
    Timings,
)
from services.workers.chat_runtime import (
    ChatRuntime,
    failure,
    parse_payload,
    submit,
)
from services.workers.metrics import (
    BATCH_SIZE,
    DELTAS,
    FINISHED,
    IN_FLIGHT,
    PREDICT_SECONDS,
    REDELIVERED,
    TOKENS,
    TOKENS_PER_S,
    TTFT,
)
from services.workers.worker import ModelWorker, describe


@dataclass
class _Stream:
    """What a streaming request's client was sent so far."""

    address: ReturnAddress
    sent: str = ""
    seq: int = 0


class ChatWorker(ModelWorker):
    """Submits requests to the engine as they come; emits answers as they finish."""

    model: ChatRuntime

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, tuple[Record, RequestEnvelope, float, float]] = {}
        self._streams: dict[str, _Stream] = {}
        self._extra: dict[str, list[Record]] = {}  # more records of a request in the engine
        self._reused = 0  # prompt tokens the runtime took from its cache, counted so far

    @property
    def busy(self) -> bool:
        """The engine has requests to run: the loop must not block on its consumer."""
        return bool(self._pending)

    def _predict(
        self, live: list[tuple[Record, RequestEnvelope]], received: float, ctx: Context
    ) -> None:
        for record, req in live:
            if req.request_id in self._pending:
                self._hold_again(record, req.request_id, ctx)
                continue
            started = max(self._clock(), received)
            try:
                payload = parse_payload(req.payload)
                left_ms = req.deadline_epoch_ms - started - self.model.config.deadline_margin_ms
                expired = self.score_expired and left_ms <= 0  # a backfill: no deadline
                submit(
                    self.model.chat,
                    payload,
                    self.model.sampling(payload),
                    deadline=None if expired else time.monotonic() + left_ms / 1000.0,
                    request_id=req.request_id,
                )
            except Exception as exc:  # noqa: BLE001 - the stream edge: a failure is a score
                timings = Timings(received_ms=received, started_ms=started, finished_ms=started)
                score = self._score(req, ScoreStatus.ERROR, timings, error=_error_text(exc))
                self._emit(ctx, record, score)
                continue
            ctx.hold(record)  # until its answer is produced
            self._pending[req.request_id] = (record, req, received, started)
            if payload.stream:
                self._streams[req.request_id] = _Stream(req.return_address)

    def _hold_again(self, record: Record, request_id: str, ctx: Context) -> None:
        """``request_id`` is generating already: hold ``record`` with it."""
        first, req, received, started = self._pending[request_id]
        ctx.hold(record)
        if _position(record) == _position(first):
            self._pending[request_id] = (record, req, received, started)
        else:
            self._extra.setdefault(request_id, []).append(record)
        REDELIVERED.labels(self.spec.name).inc()

    def _release(self, ctx: Context, request_id: str, record: Record) -> None:
        ctx.release(record)
        for extra in self._extra.pop(request_id, ()):
            ctx.release(extra)

    def tick(self, now_ms: float, ctx: Context) -> None:
        super().tick(now_ms, ctx)
        IN_FLIGHT.labels(self.spec.name).set(len(self._pending))  # generating now
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
        if (reused := self.model.chat.prompt_tokens_reused) > self._reused:
            TOKENS.labels(self.spec.name, "prompt_reused").inc(reused - self._reused)
            self._reused = reused
        finished = self._clock()
        for result in results:
            entry = self._pending.pop(result.request_id, None)
            if entry is None:
                continue
            record, req, received, started = entry
            self._observe(result)
            if (stream := self._streams.pop(req.request_id, None)) is not None:
                self._delta(ctx, req.request_id, stream, result.text, result.finish_reason)
            timings = Timings(
                received_ms=received, started_ms=started, finished_ms=max(finished, started)
            )
            self._emit(ctx, record, self._result(req, self.model.output(result), timings))
            self._release(ctx, req.request_id, record)
        if self._streams:
            for request_id, text in self.model.chat.partial_texts(self._streams).items():
                self._delta(ctx, request_id, self._streams[request_id], text)

    def _delta(
        self, ctx: Context, request_id: str, stream: _Stream, text: str, finish: str | None = None
    ) -> None:
        """Send the text added to ``text`` since the last delta (nothing when none was,
        unless the answer just finished)."""
        if not text.startswith(stream.sent):
            return  # the decoding changed what was sent: the score's answer corrects it
        new = text[len(stream.sent) :]
        if not new and finish is None:
            return
        delta = Delta(
            request_id=request_id,
            model=self.spec.name,
            seq=stream.seq,
            offset=len(stream.sent),
            text=new,
            finish_reason=finish,
        )
        address = stream.address
        ctx.emit_best_effort(
            Outbound(address.topic, message_key(delta), encode(delta), partition=address.partition)
        )
        stream.sent, stream.seq = text, stream.seq + 1
        DELTAS.labels(self.spec.name).inc()

    def _observe(self, result: Any) -> None:
        name = self.spec.name
        TOKENS.labels(name, "prompt").inc(result.prompt_tokens)
        TOKENS.labels(name, "completion").inc(result.completion_tokens)
        FINISHED.labels(name, result.finish_reason).inc()
        if result.ttft_s is not None:
            TTFT.labels(name).observe(result.ttft_s)
        TOKENS_PER_S.labels(name).observe(result.tokens_per_s)

    def _fail_all(self, ctx: Context, exc: Exception) -> None:
        """A step failed: the engine's state is unknown, so every request fails now."""
        finished = self._clock()
        for record, req, received, started in self._pending.values():
            timings = Timings(
                received_ms=received, started_ms=started, finished_ms=max(finished, started)
            )
            self._emit(
                ctx, record, self._score(req, ScoreStatus.ERROR, timings, error=_error_text(exc))
            )
            self._release(ctx, req.request_id, record)
        self._pending.clear()
        self._streams.clear()
        self.model.chat.engine.reset()  # the weights are fine; only the batch is in doubt


def _position(record: Record) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def _error_text(exc: Exception) -> ErrorBody:
    return describe(failure(exc))

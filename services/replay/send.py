"""Producing the replayed requests: fresh ids and deadlines, the replay attributes, the
original timing (or none), every record acknowledged before the command returns."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common.clock import wall_ms
from services.common.codec import encode, message_key
from services.common.errors import BackpressureError, DeliveryError
from services.common.kafka import Outbound, Producer
from services.common.messages import REPLAY, REPLAY_MODEL, REPLAY_OF, RequestEnvelope, ReturnAddress
from services.replay.plan import Archived

_ID_MAX = 128  # the longest request id (RequestId in services.common.messages)


@dataclass(frozen=True, slots=True)
class Sent:
    mark: str
    sent: int
    failed: int
    took_s: float


def envelope(
    original: Archived,
    *,
    mark: str,
    reply_to: ReturnAddress,
    now_ms: int,
    model: str | None,
) -> RequestEnvelope:
    """The replayed copy: a new id (the mark plus the original id), the same payload and
    time budget from now, the replay attributes."""
    attributes = {REPLAY: mark, REPLAY_OF: original.request_id}
    if model is not None:
        attributes[REPLAY_MODEL] = model
    rid = replay_id(mark, original.request_id)
    payload = original.payload
    if isinstance(payload, dict) and "stream" in payload:  # nobody reads a replay's stream
        payload = {k: v for k, v in payload.items() if k != "stream"}
    return RequestEnvelope(
        request_id=rid,
        endpoint=original.endpoint,
        payload=payload,
        return_address=reply_to,
        deadline_epoch_ms=now_ms + max(original.budget_ms, 1),
        created_ms=now_ms,
        trace_id=rid,
        attributes=attributes,
    )


def replay_id(mark: str, original_id: str) -> str:
    """``<mark>:<original id>``; if that is longer than a request id may be, the original
    id's digest stands for it (the ``replay_of`` attribute keeps it whole). Never cut
    short: two long ids with a common start would become one."""
    rid = f"{mark}:{original_id}"
    if len(rid) <= _ID_MAX:
        return rid
    return f"{mark}:{hashlib.sha256(original_id.encode()).hexdigest()[:32]}"


def send(
    producer: Producer,
    topic: str,
    requests: list[Archived],
    offsets_ms: list[float],
    *,
    mark: str,
    reply_to: ReturnAddress,
    model: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    flush_timeout_s: float = 30.0,
) -> Sent:
    """Produce every request at its offset after the start; returns once all are acked."""
    failures: list[str] = []

    def delivered(error: str | None) -> None:
        if error is not None:
            failures.append(error)

    start = time.monotonic()
    for i, (original, at_ms) in enumerate(zip(requests, offsets_ms, strict=True)):
        due = start + at_ms / 1000.0
        while (wait_s := due - time.monotonic()) > 0:
            producer.poll(wait_s)  # serve delivery reports while the schedule waits
        now_ms = int(wall_ms())
        env = envelope(original, mark=mark, reply_to=reply_to, now_ms=now_ms, model=model)
        out = Outbound(topic, message_key(env), encode(env))
        while True:
            try:
                producer.produce(out, delivered)
                break
            except BackpressureError:
                producer.poll(0.1)  # the local queue is full: let deliveries drain it
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1, len(requests))
    left = producer.flush(flush_timeout_s)
    if left:
        raise DeliveryError(
            f"{left} replayed requests were not acknowledged in {flush_timeout_s} s"
        )
    return Sent(mark, len(requests) - len(failures), len(failures), time.monotonic() - start)

"""The gateway's work, free of HTTP: check, stamp, produce, await the reply."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

from pydantic import ValidationError

from services.common import tracing
from services.common.clock import Clock, mono_ms, wall_ms
from services.common.codec import encode, message_key
from services.common.endpoints import EndpointSpec
from services.common.errors import ConfigError, DeliveryError, KafkaUnavailableError
from services.common.kafka import Outbound
from services.common.messages import Feedback, Reply, RequestEnvelope, ReturnAddress
from services.gateway.bus import Bus
from services.gateway.errors import (
    InvalidRequestError,
    NoAnswerError,
    OverloadedError,
    ReplyError,
    UnknownEndpointError,
)
from services.gateway.metrics import DELIVERY_FAILURES
from services.gateway.overload import LoopLag
from services.gateway.pending import PendingReplies, StreamInbox
from services.gateway.schemas import FeedbackRequest, InferRequest, describe
from services.gateway.settings import GatewaySettings

log = logging.getLogger("rdv.gateway")

W = TypeVar("W")

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def trace_id_from(headers: Mapping[str, str], default: str) -> str:
    """The W3C ``traceparent`` trace id, else a sane ``x-request-id``, else ``default``."""
    match = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    incoming = headers.get("x-request-id", "").strip()
    return incoming if _REQUEST_ID.match(incoming) else default


class Gateway:
    """Turns a validated request into an envelope on the requests topic and waits for
    the reply on this instance's return address."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        bus: Bus,
        endpoints: Mapping[str, EndpointSpec],
        requests_topic: str,
        reply_address: ReturnAddress,
        pending: PendingReplies,
        feedback_topic: str | None = None,
        clock: Clock = mono_ms,
        wall: Callable[[], float] = wall_ms,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.endpoints = dict(endpoints)
        self.pending = pending
        self.lag = LoopLag(settings.loop_lag_interval_ms)
        self._requests_topic = requests_topic
        self._feedback_topic = feedback_topic
        self._reply_address = reply_address
        self._clock = clock
        self._wall = wall

    def endpoint(self, name: str) -> EndpointSpec:
        spec = self.endpoints.get(name)
        if spec is None:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise UnknownEndpointError(f"no endpoint named {name[:64]!r} (known: {known})")
        return spec

    def ready(self) -> bool:
        return self.bus.ready()

    async def infer(
        self, spec: EndpointSpec, req: InferRequest, *, request_id: str, trace_id: str
    ) -> Reply:
        """The successful reply to ``req``; raises a gateway error for anything else."""
        fut, deadline_ms, due = self._submit(spec, req, request_id, trace_id, self.pending.open)
        try:
            left_ms = due - self._clock()
            try:
                reply = await asyncio.wait_for(fut, max(left_ms, 0.0) / 1000.0)
            except TimeoutError:
                raise NoAnswerError(f"no answer by the deadline ({deadline_ms} ms)") from None
        finally:
            self.pending.close(request_id)
        if reply.error is not None:
            raise ReplyError(
                reply.error.code,
                reply.error.message,
                model=reply.model,
                reason=reply.reason,
                ood=reply.ood,
            )
        return reply

    def open_stream(
        self, spec: EndpointSpec, req: InferRequest, *, request_id: str, trace_id: str
    ) -> tuple[StreamInbox, int, float]:
        """Put a streaming request on the requests topic; its deltas, grant and reply
        arrive in the inbox, which the caller closes with ``pending.close``. Also returns
        the deadline the request got (ms) and the monotonic ms by which the reply is due
        (the deadline plus the grace)."""
        return self._submit(spec, req, request_id, trace_id, self.pending.open_stream)

    def now_ms(self) -> float:
        """The gateway's monotonic clock."""
        return self._clock()

    async def feedback(self, req: FeedbackRequest) -> Feedback:
        """Put a client's feedback on the feedback topic; returns once Kafka has it."""
        if self._feedback_topic is None:
            raise ConfigError("this gateway has no feedback topic configured")
        if not self.bus.ready():
            raise KafkaUnavailableError("Kafka is not reachable (or not ready yet); retry later")
        msg = Feedback(
            request_id=req.request_id,
            reward=req.reward,
            label=req.label,
            received_ms=self._wall(),
        )
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[str | None] = loop.create_future()

        def settle(error: str | None) -> None:
            if not acked.done():
                acked.set_result(error)

        def delivered(error: str | None) -> None:  # the bus's thread
            loop.call_soon_threadsafe(settle, error)

        self.bus.produce(Outbound(self._feedback_topic, message_key(msg), encode(msg)), delivered)
        try:
            error = await asyncio.wait_for(acked, self.settings.flush_timeout_s)
        except TimeoutError:
            raise DeliveryError("Kafka did not confirm the feedback in time; retry") from None
        if error is not None:
            raise DeliveryError(f"Kafka did not take the feedback: {error}")
        return msg

    def _check_capacity(self) -> None:
        if not self.bus.ready():
            raise KafkaUnavailableError("Kafka is not reachable (or not ready yet); retry later")
        if self.lag.lag_ms > self.settings.max_loop_lag_ms:
            raise OverloadedError(
                f"the gateway is saturated (its event loop runs {self.lag.lag_ms:.0f} ms "
                "late); retry later"
            )
        if len(self.pending) >= self.settings.max_in_flight:
            raise OverloadedError(
                f"{self.settings.max_in_flight} requests are waiting already; retry later"
            )

    def _submit(
        self,
        spec: EndpointSpec,
        req: InferRequest,
        request_id: str,
        trace_id: str,
        open_entry: Callable[[str, int], W],
    ) -> tuple[W, int, float]:
        """Check capacity, open the request's entry in ``pending`` with ``open_entry`` and
        put its envelope on the requests topic (the entry is closed again if that fails).
        Returns the entry, the request's deadline (ms, capped at the endpoint's) and the
        monotonic ms by which its reply is due (the deadline plus the grace)."""
        deadline_ms = min(req.deadline_ms or spec.deadline_ms, spec.deadline_ms)
        self._check_capacity()
        started = self._clock()
        envelope = self._envelope(spec, req, request_id, trace_id, deadline_ms)
        out = Outbound(self._requests_topic, request_id.encode(), encode(envelope))
        entry = open_entry(request_id, len(out.value))  # refused when over the byte bound
        report: Callable[[str | None], None] = partial(self._delivered, request_id)
        if tracing.enabled():  # the record carries the producer span's context
            traced = {"rdv.request_id": request_id, "rdv.endpoint": spec.endpoint}
            out, report = tracing.sending(out, report, traced)
        try:
            self.bus.produce(out, report)
        except BaseException:
            self.pending.close(request_id)
            raise
        return entry, deadline_ms, started + deadline_ms + self.settings.grace_ms

    def _envelope(
        self,
        spec: EndpointSpec,
        req: InferRequest,
        request_id: str,
        trace_id: str,
        deadline_ms: int,
    ) -> RequestEnvelope:
        created = int(self._wall())
        try:
            return RequestEnvelope(
                request_id=request_id,
                endpoint=spec.endpoint,
                payload=req.inputs,
                return_address=self._reply_address,
                deadline_epoch_ms=created + deadline_ms,
                created_ms=created,
                trace_id=trace_id,
                attributes=dict(req.attributes),
            )
        except ValidationError as exc:  # e.g. NaN or Infinity in the inputs
            raise InvalidRequestError(describe(exc)) from None

    def _delivered(self, request_id: str, error: str | None) -> None:
        """Delivery report (reply listener thread): a lost request fails at once."""
        if error is None:
            return
        DELIVERY_FAILURES.inc()
        log.warning("request not delivered", extra={"request_id": request_id, "error": error})
        self.pending.fail(request_id, DeliveryError(f"Kafka did not take the request: {error}"))

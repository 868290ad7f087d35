"""What every OpenAI route shares at the HTTP edge: the body checked and parsed, the
model resolved to an endpoint, the deadline header, the reply's headers, and the request
counted and timed whatever happens (a platform error becomes its status and JSON body)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, JsonValue, ValidationError

from services.common.clock import mono_ms
from services.common.codec import summarise
from services.common.endpoints import EndpointSpec
from services.common.errors import RendezvousError
from services.common.messages import Reply
from services.gateway.errors import (
    InvalidRequestError,
    UnknownEndpointError,
    UnsupportedFeatureError,
    error_response,
)
from services.gateway.headers import (
    DEADLINE_HEADER,
    FINISH_HEADER,
    MODEL_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    header_value,
    ood_headers,
)
from services.gateway.metrics import LATENCY, REQUESTS, UNKNOWN_ENDPOINT
from services.gateway.routes.infer import check_media_type, read_body
from services.gateway.schemas import InferRequest
from services.gateway.service import Gateway, new_request_id, trace_id_from

M = TypeVar("M", bound=BaseModel)
MAX_DEADLINE_DIGITS = 9  # far past any endpoint's deadline, which caps it anyway


@dataclass
class Call:
    """One HTTP request as the edge sees it: when it came, its headers, and the endpoint
    and ids once a route resolved them (they label the metrics and the error answer)."""

    request: Request
    started_ms: float
    label: str = UNKNOWN_ENDPOINT
    request_id: str | None = None
    trace_id: str = ""  # set by begin()

    def begin(self, endpoint: str) -> str:
        """Name the endpoint reached; the new request id."""
        self.label = endpoint
        self.request_id = new_request_id()
        self.trace_id = trace_id_from(self.request.headers, default=self.request_id)
        return self.request_id

    def inputs(self, payload: JsonValue, **attributes: str | None) -> InferRequest:
        """The envelope's inputs: ``payload``, the attributes given a value, and the
        optional x-rdv-deadline-ms header (relative ms, capped at the endpoint's)."""
        deadline = self.request.headers.get(DEADLINE_HEADER)
        return InferRequest(
            inputs=payload,
            attributes={name: value for name, value in attributes.items() if value},
            deadline_ms=None if deadline is None else parse_deadline(deadline),
        )


Handler = Callable[[bytes, Call], Awaitable[Response]]


async def serve(request: Request, gateway: Gateway, handle: Handler) -> Response:
    """``handle`` the request's body; any platform error is answered by its status; the
    request is counted and timed (a stream's time is observed at its end)."""
    call = Call(request, mono_ms())
    try:
        check_media_type(request.headers.get("content-type"))
        response = await handle(await read_body(request, gateway.settings.max_body_bytes), call)
    except RendezvousError as exc:
        response = error_response(
            exc, request_id=call.request_id, retry_after_s=gateway.settings.retry_after_s
        )
    REQUESTS.labels(call.label, str(response.status_code)).inc()
    if not isinstance(response, StreamingResponse):
        LATENCY.labels(call.label).observe((mono_ms() - call.started_ms) / 1000.0)
    return response


def parse_body(model: type[M], body: bytes, example: str) -> M:
    """The JSON body as ``model``; ``example`` shows the shape when the body is empty."""
    if not body:
        raise InvalidRequestError(f"empty body: send {example}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequestError(summarise(exc, root="body")) from None


def one_choice(n: int | None) -> None:
    if n not in (None, 1):
        raise UnsupportedFeatureError("n > 1 is not supported; ask once per completion", "n")


def resolve(gateway: Gateway, model: str) -> EndpointSpec:
    """The endpoint named ``model``, else the endpoint whose roster has it."""
    if model in gateway.endpoints:
        return gateway.endpoints[model]
    for spec in gateway.endpoints.values():
        if model in spec.answering_models:
            return spec
    raise UnknownEndpointError(f"model {model!r} is not served here; GET /v1/models lists them")


def parse_deadline(value: str) -> int:
    """The x-rdv-deadline-ms header as ms: ASCII digits only (headers arrive as latin-1,
    where ``'²'.isdigit()``), and few enough that ``int`` stays cheap."""
    digits = value.isascii() and value.isdigit() and len(value) <= MAX_DEADLINE_DIGITS
    if not digits or int(value) < 1:
        raise InvalidRequestError(f"{DEADLINE_HEADER} must be a positive integer (ms)")
    return int(value)


def reply_headers(request_id: str, reply: Reply, finish: str | None = None) -> Mapping[str, str]:
    """The headers of an answer: its request id, the model and reason, the model's own
    finish reason (chat) and the OOD gate's finding."""
    headers = {
        REQUEST_ID_HEADER: request_id,
        MODEL_HEADER: header_value(reply.model or "-"),
        REASON_HEADER: header_value(reply.reason),
        **ood_headers(reply.ood),
    }
    if finish is not None:
        headers[FINISH_HEADER] = finish
    return headers

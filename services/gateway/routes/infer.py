"""``POST /v1/infer/{endpoint}``: read and check the body, ask the gateway, answer."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.common.clock import mono_ms
from services.common.errors import RendezvousError
from services.common.messages import Reply
from services.gateway.deps import GatewayDep
from services.gateway.errors import (
    BodyTooLargeError,
    InvalidRequestError,
    UnsupportedMediaTypeError,
    error_response,
)
from services.gateway.headers import (
    MODEL_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    TRACE_HEADER,
    header_value,
    ood_headers,
)
from services.gateway.metrics import LATENCY, REQUESTS, UNKNOWN_ENDPOINT
from services.gateway.schemas import InferRequest, describe
from services.gateway.service import new_request_id, trace_id_from

router = APIRouter()


@router.post("/v1/infer/{endpoint}")
async def infer(endpoint: str, request: Request, gateway: GatewayDep) -> Response:
    started = mono_ms()
    label = endpoint if endpoint in gateway.endpoints else UNKNOWN_ENDPOINT
    request_id: str | None = None
    try:
        spec = gateway.endpoint(endpoint)
        check_media_type(request.headers.get("content-type"))
        body = await read_body(request, gateway.settings.max_body_bytes)
        req = parse(body)
        request_id = new_request_id()
        request.state.request_id = request_id
        trace_id = trace_id_from(request.headers, default=request_id)
        reply = await gateway.infer(spec, req, request_id=request_id, trace_id=trace_id)
        response = answer(reply, request_id, trace_id, latency_ms=mono_ms() - started)
    except RendezvousError as exc:
        retry_after_s = gateway.settings.retry_after_s
        response = error_response(exc, request_id=request_id, retry_after_s=retry_after_s)
    REQUESTS.labels(label, str(response.status_code)).inc()
    LATENCY.labels(label).observe((mono_ms() - started) / 1000.0)
    return response


def answer(reply: Reply, request_id: str, trace_id: str, *, latency_ms: float) -> Response:
    """200 with the chosen model's output; who answered and why also go in headers, and
    what the endpoint's OOD gate found (``ood`` and ``x-rdv-ood``; null/absent without one)."""
    headers = {
        REQUEST_ID_HEADER: request_id,
        REASON_HEADER: header_value(reply.reason),
        TRACE_HEADER: trace_id,
    }
    if reply.model is not None:
        headers[MODEL_HEADER] = header_value(reply.model)
    headers.update(ood_headers(reply.ood))
    content = {
        "request_id": request_id,
        "model": reply.model,
        "reason": reply.reason,
        "output": reply.output,
        "latency_ms": round(latency_ms, 3),
        "ood": None if reply.ood is None else reply.ood.model_dump(),
    }
    return JSONResponse(content, headers=headers)


def check_media_type(content_type: str | None) -> None:
    """JSON (or no declared type, read as JSON); anything else is refused."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in ("", "application/json") or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise UnsupportedMediaTypeError(f"the body must be application/json, not {media[:64]!r}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (before and while reading) once it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"body of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(f"body exceeds the limit of {limit} bytes")
    return bytes(body)


def parse(body: bytes) -> InferRequest:
    if not body:
        raise InvalidRequestError('empty body: send a JSON object like {"inputs": ...}')
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequestError(describe(exc)) from None

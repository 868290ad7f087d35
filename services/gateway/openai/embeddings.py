"""OpenAI-compatible ``POST /v1/embeddings``: the texts become a request envelope for an
embeddings endpoint (``model`` names the endpoint, or a model on its roster), so an
embedding gets the same deadline, recording and comparison as any answer."""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from services.common.clock import mono_ms
from services.common.codec import summarise
from services.common.embeddings import MAX_TEXTS, EmbeddingOutput, EmbeddingPayload
from services.common.errors import MessageError, RendezvousError
from services.gateway.deps import GatewayDep
from services.gateway.errors import InvalidRequestError, UnsupportedFeatureError, error_response
from services.gateway.headers import (
    DEADLINE_HEADER,
    MODEL_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    header_value,
)
from services.gateway.metrics import LATENCY, REQUESTS, UNKNOWN_ENDPOINT
from services.gateway.openai.params import refuse_unsupported
from services.gateway.openai.routes import parse_deadline, resolve
from services.gateway.routes.infer import check_media_type, read_body
from services.gateway.schemas import InferRequest
from services.gateway.service import new_request_id, trace_id_from

router = APIRouter()


class OpenAIEmbeddingRequest(BaseModel):
    """The honoured fields; any other is refused by name (``params.py``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1, max_length=128)
    input: JsonValue
    """A string or a list of strings (token-id arrays are refused by name)."""
    encoding_format: Literal["float", "base64"] | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


@router.post("/v1/embeddings")
async def embeddings(request: Request, gateway: GatewayDep) -> Response:
    started = mono_ms()
    label, request_id = UNKNOWN_ENDPOINT, None
    try:
        check_media_type(request.headers.get("content-type"))
        req = parse_embeddings(await read_body(request, gateway.settings.max_body_bytes))
        spec = resolve(gateway, req.model)
        label = spec.endpoint
        request_id = new_request_id()
        deadline = request.headers.get(DEADLINE_HEADER)
        payload = payload_of(req)
        inputs = InferRequest(
            inputs=payload.model_dump(),
            attributes={"user": req.user} if req.user else {},
            deadline_ms=None if deadline is None else parse_deadline(deadline),
        )
        trace_id = trace_id_from(request.headers, default=request_id)
        reply = await gateway.infer(spec, inputs, request_id=request_id, trace_id=trace_id)
        out = embedding_output(reply.output)
        body = answer(
            out, reply.model or spec.endpoint, len(payload.input), req.encoding_format == "base64"
        )
        response: Response = JSONResponse(
            body.model_dump(),
            headers={
                REQUEST_ID_HEADER: request_id,
                MODEL_HEADER: header_value(reply.model or "-"),
                REASON_HEADER: header_value(reply.reason),
            },
        )
    except RendezvousError as exc:
        response = error_response(
            exc, request_id=request_id, retry_after_s=gateway.settings.retry_after_s
        )
    REQUESTS.labels(label, str(response.status_code)).inc()
    LATENCY.labels(label).observe((mono_ms() - started) / 1000.0)
    return response


def parse_embeddings(body: bytes) -> OpenAIEmbeddingRequest:
    if not body:
        raise InvalidRequestError('empty body: send {"model": ..., "input": ...}')
    try:
        req = OpenAIEmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequestError(summarise(exc, root="body")) from None
    extra = dict(req.model_extra or {})
    if extra.pop("dimensions", None) is not None:
        raise UnsupportedFeatureError(
            "dimensions is not supported: the model's vectors have one size", param="dimensions"
        )
    refuse_unsupported(extra, {})
    return req


def payload_of(req: OpenAIEmbeddingRequest) -> EmbeddingPayload:
    texts = [req.input] if isinstance(req.input, str) else req.input
    if isinstance(texts, list) and texts and all(isinstance(t, (int, list)) for t in texts):
        raise UnsupportedFeatureError("input as token ids is not supported; send text", "input")
    try:
        return EmbeddingPayload.model_validate({"input": texts})
    except ValidationError as exc:
        raise InvalidRequestError(
            f"{summarise(exc, root='body')} (input: 1 to {MAX_TEXTS} non-empty strings)"
        ) from None


def embedding_output(output: object) -> EmbeddingOutput:
    """A reply's output as embeddings; ``MessageError`` (a 502) when it is none."""
    try:
        return EmbeddingOutput.model_validate(output)
    except ValidationError as exc:
        raise MessageError(f"the model's answer is not embeddings: {summarise(exc)}") from None


def answer(out: EmbeddingOutput, model: str, texts: int, as_base64: bool) -> EmbeddingList:
    """The OpenAI body for ``texts`` texts; ``MessageError`` (a 502) when the model did
    not give one vector each."""
    if len(out.vectors) != texts:
        raise MessageError(f"the model gave {len(out.vectors)} vectors for {texts} texts")
    data = [
        Embedding(index=i, embedding=encoded(v) if as_base64 else v)
        for i, v in enumerate(out.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=out.prompt_tokens, total_tokens=out.prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage)


def encoded(vector: list[float]) -> str:
    """OpenAI's base64 form: the little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")

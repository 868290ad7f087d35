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

from services.common.codec import summarise
from services.common.embeddings import MAX_TEXTS, EmbeddingOutput, EmbeddingPayload
from services.common.errors import MessageError
from services.gateway.deps import GatewayDep
from services.gateway.errors import InvalidRequestError, UnsupportedFeatureError
from services.gateway.openai.edge import Call, parse_body, reply_headers, resolve, serve
from services.gateway.openai.params import refuse_unsupported

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
    async def handle(body: bytes, call: Call) -> Response:
        req = parse_embeddings(body)
        spec = resolve(gateway, req.model)
        request_id = call.begin(spec.endpoint)
        payload = payload_of(req)
        inputs = call.inputs(payload.model_dump(), user=req.user)
        reply = await gateway.infer(spec, inputs, request_id=request_id, trace_id=call.trace_id)
        out = embedding_output(reply.output)
        base64_form = req.encoding_format == "base64"
        answered = answer(out, reply.model or spec.endpoint, len(payload.input), base64_form)
        return JSONResponse(answered.model_dump(), headers=reply_headers(request_id, reply))

    return await serve(request, gateway, handle)


def parse_embeddings(body: bytes) -> OpenAIEmbeddingRequest:
    req = parse_body(OpenAIEmbeddingRequest, body, '{"model": ..., "input": ...}')
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

"""OpenAI's legacy ``POST /v1/completions``: a raw prompt the chat endpoint's model
continues (no chat template), through the stream like a chat request. One prompt per
request; what the legacy API offers beyond the chat parameters (``echo``, ``suffix``,
``best_of``, ``logprobs`` as a count, streaming) is refused by name."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from services.common.chat import ChatPayload
from services.common.clock import mono_ms
from services.common.codec import summarise
from services.common.errors import RendezvousError
from services.gateway.deps import GatewayDep
from services.gateway.errors import InvalidRequestError, UnsupportedFeatureError, error_response
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
from services.gateway.openai.params import refuse_unsupported
from services.gateway.openai.routes import parse_deadline, resolve
from services.gateway.openai.schemas import Usage, chat_output
from services.gateway.routes.infer import check_media_type, read_body
from services.gateway.schemas import InferRequest
from services.gateway.service import new_request_id, trace_id_from

router = APIRouter()
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class OpenAICompletionRequest(BaseModel):
    """The honoured fields; the legacy extras only at the value that asks for nothing."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1, max_length=128)
    prompt: JsonValue
    """A string, or a list holding one string (token-id prompts are refused by name)."""
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: Annotated[str, StringConstraints(max_length=256)] | None = None


LEGACY_NEUTRAL = {
    "stream": lambda v: v in (None, False),
    "stream_options": lambda v: v is None,
    "echo": lambda v: v in (None, False),
    "suffix": lambda v: v in (None, ""),
    "best_of": lambda v: v in (None, 1),
    "logprobs": lambda v: v is None,
    "logit_bias": lambda v: v in (None, {}),
}


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


@router.post("/v1/completions")
async def completions(request: Request, gateway: GatewayDep) -> Response:
    started = mono_ms()
    label, request_id = UNKNOWN_ENDPOINT, None
    try:
        check_media_type(request.headers.get("content-type"))
        req = parse_completion(await read_body(request, gateway.settings.max_body_bytes))
        spec = resolve(gateway, req.model)
        label = spec.endpoint
        request_id = new_request_id()
        inputs = to_infer_request(req, request.headers.get(DEADLINE_HEADER))
        trace_id = trace_id_from(request.headers, default=request_id)
        reply = await gateway.infer(spec, inputs, request_id=request_id, trace_id=trace_id)
        out = chat_output(reply.output)
        body = CompletionResponse(
            id=f"cmpl-{request_id}",
            created=int(time.time()),
            model=reply.model or spec.endpoint,
            choices=[
                CompletionChoice(
                    text=out.text, finish_reason="stop" if out.finish_reason == "stop" else "length"
                )
            ],
            usage=Usage(
                prompt_tokens=out.usage.prompt_tokens,
                completion_tokens=out.usage.completion_tokens,
                total_tokens=out.usage.prompt_tokens + out.usage.completion_tokens,
            ),
        )
        response: Response = JSONResponse(
            body.model_dump(),
            headers={
                REQUEST_ID_HEADER: request_id,
                MODEL_HEADER: header_value(reply.model or "-"),
                REASON_HEADER: header_value(reply.reason),
                FINISH_HEADER: out.finish_reason,
                **ood_headers(reply.ood),
            },
        )
    except RendezvousError as exc:
        response = error_response(
            exc, request_id=request_id, retry_after_s=gateway.settings.retry_after_s
        )
    REQUESTS.labels(label, str(response.status_code)).inc()
    LATENCY.labels(label).observe((mono_ms() - started) / 1000.0)
    return response


def parse_completion(body: bytes) -> OpenAICompletionRequest:
    if not body:
        raise InvalidRequestError('empty body: send {"model": ..., "prompt": ...}')
    try:
        req = OpenAICompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequestError(summarise(exc, root="body")) from None
    refuse_unsupported(req.model_extra or {}, LEGACY_NEUTRAL)
    if req.n not in (None, 1):
        raise UnsupportedFeatureError("n > 1 is not supported; ask once per completion", "n")
    return req


def prompt_text(prompt: JsonValue) -> str:
    """The one prompt of a request: a string, or a list of one string."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise UnsupportedFeatureError("one prompt per request: send the others apart", "prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (int, list)) for p in prompt):
        raise UnsupportedFeatureError("prompts as token ids are not supported", "prompt")
    raise InvalidRequestError("body.prompt: must be a string")


def to_infer_request(req: OpenAICompletionRequest, deadline: str | None) -> InferRequest:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        payload = ChatPayload.model_validate(
            {
                "prompt": prompt_text(req.prompt),
                "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
                "temperature": 1.0 if req.temperature is None else req.temperature,
                "top_p": 1.0 if req.top_p is None else req.top_p,
                "stop": stop,
                "seed": req.seed,
                "frequency_penalty": req.frequency_penalty or 0.0,
                "presence_penalty": req.presence_penalty or 0.0,
            }
        )
    except ValidationError as exc:
        raise InvalidRequestError(summarise(exc, root="body")) from None
    return InferRequest(
        inputs=payload.to_wire(),
        attributes={"user": req.user} if req.user else {},
        deadline_ms=None if deadline is None else parse_deadline(deadline),
    )

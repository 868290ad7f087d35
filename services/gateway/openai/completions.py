"""OpenAI's legacy ``POST /v1/completions``: a raw prompt the chat endpoint's model
continues (no chat template), through the stream like a chat request. One prompt per
request; what the legacy API offers beyond the chat parameters (``echo``, ``suffix``,
``best_of``, ``logprobs`` as a count, streaming) is refused by name."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, JsonValue, ValidationError

from services.common.chat import ChatPayload
from services.common.codec import summarise
from services.gateway.deps import GatewayDep
from services.gateway.errors import InvalidRequestError, UnsupportedFeatureError
from services.gateway.openai.edge import (
    Call,
    one_choice,
    parse_body,
    reply_headers,
    resolve,
    serve,
)
from services.gateway.openai.params import NEUTRAL, refuse_unsupported
from services.gateway.openai.schemas import (
    SamplingFields,
    Usage,
    chat_output,
    finish_of,
    usage_of,
)
from services.gateway.schemas import InferRequest

router = APIRouter()
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class OpenAICompletionRequest(SamplingFields):
    """The honoured fields; the legacy extras only at the value that asks for nothing."""

    prompt: JsonValue
    """A string, or a list holding one string (token-id prompts are refused by name)."""


LEGACY_NEUTRAL = {
    "stream": lambda v: v in (None, False),
    "stream_options": lambda v: v is None,
    "echo": lambda v: v in (None, False),
    "suffix": lambda v: v in (None, ""),
    "best_of": lambda v: v in (None, 1),
    "logprobs": lambda v: v is None,
    "logit_bias": NEUTRAL["logit_bias"],
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
    async def handle(body: bytes, call: Call) -> Response:
        req = parse_completion(body)
        spec = resolve(gateway, req.model)
        request_id = call.begin(spec.endpoint)
        inputs = to_infer_request(req, call)
        reply = await gateway.infer(spec, inputs, request_id=request_id, trace_id=call.trace_id)
        out = chat_output(reply.output)
        answer = CompletionResponse(
            id=f"cmpl-{request_id}",
            created=int(time.time()),
            model=reply.model or spec.endpoint,
            choices=[CompletionChoice(text=out.text, finish_reason=finish_of(out))],
            usage=usage_of(out),
        )
        return JSONResponse(
            answer.model_dump(), headers=reply_headers(request_id, reply, out.finish_reason)
        )

    return await serve(request, gateway, handle)


def parse_completion(body: bytes) -> OpenAICompletionRequest:
    req = parse_body(OpenAICompletionRequest, body, '{"model": ..., "prompt": ...}')
    refuse_unsupported(req.model_extra or {}, LEGACY_NEUTRAL)
    one_choice(req.n)
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


def to_infer_request(req: OpenAICompletionRequest, call: Call) -> InferRequest:
    try:
        payload = ChatPayload.model_validate(
            {
                **req.sampling(),
                "prompt": prompt_text(req.prompt),
                "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
            }
        )
    except ValidationError as exc:
        raise InvalidRequestError(summarise(exc, root="body")) from None
    return call.inputs(payload.to_wire(), user=req.user)

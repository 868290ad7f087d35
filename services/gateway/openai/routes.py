"""OpenAI-compatible chat: ``POST /v1/chat/completions`` and ``GET /v1/models``, so the
official ``openai`` client works unchanged. A chat request becomes a request envelope
for a chat endpoint (``model`` names the endpoint, or a model on its roster); the
rendezvous picks the answer as for any endpoint, and the response's ``model`` and the
``x-rdv-model`` / ``x-rdv-reason`` headers say which model answered and why; ``ood``
(body) and ``x-rdv-ood`` say what the endpoint's OOD gate found, where it has one.
``stream: true`` answers with server-sent events (streaming.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.common.chat import ChatOutput, ChatPayload, OutputFormat
from services.common.codec import summarise
from services.common.decide import OOD_SAFE_REPLY
from services.common.endpoints import EndpointSpec
from services.gateway.deps import GatewayDep
from services.gateway.errors import InvalidRequestError, UnsupportedFeatureError
from services.gateway.headers import (
    FINISH_HEADER,
    MODEL_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    header_value,
    ood_headers,
)
from services.gateway.openai.edge import (
    Call,
    one_choice,
    parse_body,
    reply_headers,
    resolve,
    serve,
)
from services.gateway.openai.params import chat_messages, refuse_unsupported
from services.gateway.openai.schemas import (
    Choice,
    ChoiceMessage,
    FinishReason,
    FunctionCall,
    ModelCard,
    ModelList,
    OpenAIChatRequest,
    OpenAIChatResponse,
    ToolCall,
    chat_output,
    choice_logprobs,
    finish_of,
    usage_of,
)
from services.gateway.openai.streaming import ChatStream, EventStream
from services.gateway.openai.tools import ToolPlan, output_plan
from services.gateway.schemas import InferRequest
from services.gateway.service import Gateway

router = APIRouter()
DEFAULT_MAX_TOKENS = 128


@router.get("/v1/models")
async def list_models(gateway: GatewayDep) -> Response:
    """Every endpoint and every model on an endpoint's roster (not its OOD detector)."""
    names = set(gateway.endpoints)
    for spec in gateway.endpoints.values():
        names.update(spec.answering_models)
    return JSONResponse(ModelList(data=[ModelCard(id=n) for n in sorted(names)]).model_dump())


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, gateway: GatewayDep) -> Response:
    async def handle(body: bytes, call: Call) -> Response:
        req = parse_chat(body)
        spec = resolve(gateway, req.model)
        request_id = call.begin(spec.endpoint)
        form, plan = output_plan(req.response_format, req.tools, req.tool_choice)
        if plan is not None and req.stream and not plan.forced:
            raise UnsupportedFeatureError(
                'a stream with tool_choice "required" over several tools is not supported; '
                "name the function",
                "stream",
            )
        inputs = to_infer_request(req, call, form, plan)
        trace_id = call.trace_id
        if req.stream:
            stream_from = ChatStreamStart(request_id, trace_id, call.started_ms, req, plan)
            return await stream(gateway, spec, inputs, stream_from)
        return await complete(gateway, spec, inputs, request_id, trace_id, plan=plan)

    return await serve(request, gateway, handle)


async def complete(
    gateway: Gateway,
    spec: EndpointSpec,
    inputs: InferRequest,
    request_id: str,
    trace_id: str,
    *,
    plan: ToolPlan | None = None,
) -> Response:
    """The whole completion at once (``stream: false``)."""
    reply = await gateway.infer(spec, inputs, request_id=request_id, trace_id=trace_id)
    out = chat_output(reply.output)
    body = OpenAIChatResponse(
        id=f"chatcmpl-{request_id}",
        created=int(time.time()),
        model=reply.model or spec.endpoint,
        choices=[choice_of(out, tool_for(plan, reply.reason), request_id)],
        usage=usage_of(out),
        ood=reply.ood,
    )
    return JSONResponse(
        body.model_dump(), headers=reply_headers(request_id, reply, out.finish_reason)
    )


def tool_for(plan: ToolPlan | None, reason: str) -> ToolPlan | None:
    """The tool call an answer makes: none when the OOD gate's safe reply answered."""
    return None if reason == OOD_SAFE_REPLY else plan


def choice_of(out: ChatOutput, plan: ToolPlan | None, request_id: str) -> Choice:
    """The answer as a choice: a tool call when one was asked for and the answer holds
    a whole one, else text."""
    finish: FinishReason = finish_of(out)
    call = plan.call(out.text) if plan is not None else None
    if call is None:
        message = ChoiceMessage(content=out.text)
    else:
        function = FunctionCall(name=call[0], arguments=call[1])
        message = ChoiceMessage(
            content=None, tool_calls=[ToolCall(id=call_id(request_id), function=function)]
        )
        finish = "tool_calls" if finish == "stop" else finish
    return Choice(message=message, finish_reason=finish, logprobs=choice_logprobs(out))


def call_id(request_id: str) -> str:
    return f"call_{request_id[:24]}"


@dataclass(frozen=True)
class ChatStreamStart:
    """A streaming request's ids, start time and parameters."""

    request_id: str
    trace_id: str
    started_ms: float
    req: OpenAIChatRequest
    plan: ToolPlan | None = None


async def stream(
    gateway: Gateway, spec: EndpointSpec, inputs: InferRequest, start: ChatStreamStart
) -> Response:
    """The event stream of a ``stream: true`` request, once the rendezvous granted it a
    model (or answered); errors until then raise, as without streaming. Until the
    response holds the stream (and closes it), any failure closes the request here."""
    request_id, req = start.request_id, start.req
    inbox, deadline_ms, due = gateway.open_stream(
        spec, inputs, request_id=request_id, trace_id=start.trace_id
    )
    try:
        chat = ChatStream(
            gateway,
            inbox,
            request_id=request_id,
            endpoint=spec.endpoint,
            due_ms=due,
            deadline_ms=deadline_ms,
            started_ms=start.started_ms,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            tool=None if start.plan is None else (start.plan.tools[0].name, call_id(request_id)),
        )
        await chat.start()
        close = partial(gateway.pending.close, request_id)  # also if the events never start
        return EventStream(chat.events(), on_close=close, headers=stream_headers(chat))
    except BaseException:
        gateway.pending.close(request_id)
        raise


def stream_headers(chat: ChatStream) -> dict[str, str]:
    """A started stream's headers: the model, and all the reply says when it came first."""
    headers = {
        REQUEST_ID_HEADER: chat.request_id,
        MODEL_HEADER: header_value(chat.model),
        "cache-control": "no-cache",
        "x-accel-buffering": "no",  # proxies must not hold the events back
    }
    grant, reply = chat.text.granted, chat.reply
    if reply is not None:  # answered before any grant: all is known now
        headers[REASON_HEADER] = header_value(reply.reason)
        headers[FINISH_HEADER] = chat_output(reply.output).finish_reason
    headers.update(ood_headers(grant.ood if grant is not None else reply.ood if reply else None))
    return headers


def parse_chat(body: bytes) -> OpenAIChatRequest:
    req = parse_body(OpenAIChatRequest, body, '{"model": ..., "messages": [...]}')
    refuse_unsupported(req.model_extra or {})
    one_choice(req.n)
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequestError("body.top_logprobs: needs logprobs: true")
    if req.logprobs and req.stream:
        raise UnsupportedFeatureError(
            "logprobs with stream: true is not supported yet; ask without streaming",
            param="logprobs",
        )
    return req


def to_infer_request(
    req: OpenAIChatRequest,
    call: Call,
    form: OutputFormat | None = None,
    plan: ToolPlan | None = None,
) -> InferRequest:
    """The envelope's inputs: the chat payload, ``user`` and ``safety_identifier`` as
    attributes, and the deadline header."""
    try:
        payload = ChatPayload.model_validate(
            {
                **req.sampling(),
                "messages": with_hint(chat_messages(req.messages), plan),
                "max_tokens": req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
                "stream": bool(req.stream),
                "logprobs": bool(req.logprobs),
                "top_logprobs": req.top_logprobs or 0,
                "output_format": form,
            }
        )
    except ValidationError as exc:
        raise InvalidRequestError(summarise(exc, root="body")) from None
    return call.inputs(payload.to_wire(), user=req.user, safety_identifier=req.safety_identifier)


def with_hint(messages: list[dict[str, str]], plan: ToolPlan | None) -> list[dict[str, str]]:
    """The conversation with the tool call's hint leading its system message."""
    if plan is None:
        return messages
    if messages and messages[0]["role"] == "system":
        first = {"role": "system", "content": f"{plan.hint()}\n\n{messages[0]['content']}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": plan.hint()}, *messages]

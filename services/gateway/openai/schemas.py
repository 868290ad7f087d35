"""The OpenAI chat-completions wire format, as far as the gateway supports it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from services.common.chat import ChatOutput
from services.common.codec import summarise
from services.common.errors import MessageError
from services.common.messages import OodCheck


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    include_usage: bool = False
    """Send a last chunk with the usage (and no choices) before ``[DONE]``."""


class OpenAIMessage(BaseModel):
    """One message as OpenAI clients send it; ``content`` a string or text parts.
    Other fields (``name``, ``tool_calls``, ...) are checked by ``params.py``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    role: str
    content: str | list[dict[str, JsonValue]] | None = None


class SamplingFields(BaseModel):
    """The sampling parameters chat and legacy completions share (None: OpenAI's
    default)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1, max_length=128)
    """An endpoint name (e.g. ``chat``) or a model on an endpoint's roster."""
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    """None: 1, OpenAI's default."""
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: Annotated[str, StringConstraints(max_length=256)] | None = None

    def sampling(self) -> dict[str, JsonValue]:
        """These fields as ChatPayload's, OpenAI's defaults filled in."""
        return {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "stop": [self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            "seed": self.seed,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "presence_penalty": self.presence_penalty or 0.0,
        }


class OpenAIChatRequest(SamplingFields):
    """``POST /v1/chat/completions``. The fields here are honoured; any other OpenAI
    parameter is refused (a 400 naming it) unless it asks for nothing (``params.py``)."""

    messages: list[OpenAIMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: JsonValue = None
    tools: JsonValue = None
    tool_choice: JsonValue = None
    """response_format, tools and tool_choice: see tools.py."""
    parallel_tool_calls: bool | None = None
    """At most one call is made, which fits either value."""
    safety_identifier: Annotated[str, StringConstraints(max_length=256)] | None = None
    """Like ``user``: recorded as the request's attribute of that name."""


class FunctionCall(BaseModel):
    name: str | None = None
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(BaseModel):
    index: int = 0
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class LogprobAlternative(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class LogprobEntry(LogprobAlternative):
    top_logprobs: list[LogprobAlternative]


class ChoiceLogprobs(BaseModel):
    content: list[LogprobEntry] | None
    refusal: None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(BaseModel):
    index: int = 0
    message: ChoiceMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    ood: OodCheck | None = None  # an extension: the OOD gate's finding


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: FinishReason | None = None


class StreamEnd(BaseModel):
    """An extension on a stream's last chunk: who answered, why, how generation ended."""

    model: str | None
    reason: str
    finish_reason: str  # the model's own: stop, length or deadline


class OpenAIChatChunk(BaseModel):
    """One server-sent event of a streamed completion (``stream: true``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    ood: OodCheck | None = None  # an extension, on the first chunk: the OOD gate's finding
    rdv: StreamEnd | None = None  # an extension, on the chunk with the finish reason


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "rendezvous"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def usage_of(out: ChatOutput) -> Usage:
    prompt, completion = out.usage.prompt_tokens, out.usage.completion_tokens
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def finish_of(out: ChatOutput) -> Literal["stop", "length"]:
    """OpenAI's finish reason for the model's own (a deadline cut reads ``length``)."""
    return "stop" if out.finish_reason == "stop" else "length"


def chat_output(output: object) -> ChatOutput:
    """A reply's output as a chat answer; ``MessageError`` (a 502) when it is none."""
    try:
        return ChatOutput.model_validate(output)
    except ValidationError as exc:
        raise MessageError(
            f"the model's answer is not a chat completion: {summarise(exc)}"
        ) from None


def choice_logprobs(out: ChatOutput) -> ChoiceLogprobs | None:
    """The answer's log-probabilities in OpenAI's shape; None when the answer has none
    (it did not ask, or no model generated it, e.g. an OOD gate's safe reply)."""
    if out.logprobs is None:
        return None
    return ChoiceLogprobs(
        content=[
            LogprobEntry(
                token=t.token,
                logprob=t.logprob,
                bytes=token_bytes(t.token),
                top_logprobs=[
                    LogprobAlternative(token=a.token, logprob=a.logprob, bytes=token_bytes(a.token))
                    for a in t.top_logprobs
                ],
            )
            for t in out.logprobs
        ]
    )


def token_bytes(token: str) -> list[int] | None:
    """A token's UTF-8 bytes; None for a token that holds part of a character (its
    text is U+FFFD, its own bytes are not known here)."""
    return None if "\ufffd" in token else list(token.encode("utf-8"))

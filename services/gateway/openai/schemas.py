"""The OpenAI chat-completions wire format, as far as the gateway supports it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from services.common.chat import ChatMessage, ChatOutput
from services.common.codec import summarise
from services.common.errors import MessageError
from services.common.messages import OodCheck


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    include_usage: bool = False
    """Send a last chunk with the usage (and no choices) before ``[DONE]``."""


class OpenAIChatRequest(BaseModel):
    """``POST /v1/chat/completions``. Unknown fields are ignored, as OpenAI's own API
    ignores fields a model does not use; fields we cannot honour are refused."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(min_length=1, max_length=128)
    """An endpoint name (e.g. ``chat``) or a model on an endpoint's roster."""
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChoiceMessage
    finish_reason: Literal["stop", "length"]


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


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = None


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


def chat_output(output: object) -> ChatOutput:
    """A reply's output as a chat answer; ``MessageError`` (a 502) when it is none."""
    try:
        return ChatOutput.model_validate(output)
    except ValidationError as exc:
        raise MessageError(
            f"the model's answer is not a chat completion: {summarise(exc)}"
        ) from None

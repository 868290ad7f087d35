"""The OpenAI chat-completions wire format, as far as the gateway supports it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.common.chat import ChatMessage
from services.common.messages import OodCheck


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "rendezvous"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

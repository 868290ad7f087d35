"""The chat contract between the gateway and chat model workers: what a chat request's
payload holds, and what a chat model's score output holds. Both are plain JSON in the
envelope and the score; these models validate them at each edge."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator


class ChatMessage(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class OutputFormat(BaseModel):
    """The answer must be a JSON document: any object, or one valid for ``json_schema``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    json_schema: dict[str, JsonValue] | None = None


class ChatPayload(BaseModel):
    """A chat request as models receive it (RequestEnvelope.payload): a conversation
    (``messages``, rendered with the model's chat template) or, for OpenAI's legacy
    ``/v1/completions``, a raw ``prompt`` the model continues; exactly one of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    prompt: str | None = Field(default=None, min_length=1, max_length=200_000)
    max_tokens: int = Field(default=128, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = None
    stream: bool = False
    """The client streams the answer: the model sends Delta records to the return
    address as it generates (the gateway leaves the field out when false)."""
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    """Lower a token's logit by ``count * frequency_penalty + (count > 0) *
    presence_penalty`` (its count in the answer so far), as OpenAI defines them."""
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)
    """With ``logprobs``: each answer token's log-probability and this many likeliest
    alternatives at its position."""

    output_format: OutputFormat | None = None
    """Hold the answer to JSON (constrained decoding): OpenAI's ``response_format``,
    and the arguments of a forced tool call."""

    @model_validator(mode="after")
    def _one_input(self) -> ChatPayload:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages and prompt")
        return self

    def to_wire(self) -> dict[str, JsonValue]:
        """The payload as JSON, the fields left at their default that older chat
        workers do not know (prompt, stream, penalties, logprobs, output format) left
        out, and ``messages`` when a prompt stands in for it."""
        newer = {
            "messages",
            "prompt",
            "stream",
            "frequency_penalty",
            "presence_penalty",
            "logprobs",
            "top_logprobs",
            "output_format",
        }
        defaults = {
            name for name in newer if getattr(self, name) == type(self).model_fields[name].default
        }
        return self.model_dump(exclude=defaults)


def wants_stream(payload: JsonValue) -> bool:
    """Whether a request payload asks for a streamed answer (``"stream": true``), read
    without validating the rest (the rendezvous does not parse chat payloads)."""
    return isinstance(payload, dict) and payload.get("stream") is True


FinishReason = Literal["stop", "length", "deadline"]


class ChatUsage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class TopLogprob(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    logprob: float


class TokenLogprob(BaseModel):
    """One answer token's log-probability and the likeliest tokens at its position."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatOutput(BaseModel):
    """A chat model's answer (Score.output): the text, why it ended, and its costs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    text: str
    finish_reason: FinishReason
    """``deadline``: cut off because the request's deadline could not be met otherwise."""
    usage: ChatUsage
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    logprobs: list[TokenLogprob] | None = None
    """Per answer token, when the request asked for ``logprobs``."""

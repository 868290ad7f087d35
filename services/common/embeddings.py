"""The embeddings contract between the gateway and embedding model workers: a request's
payload (the texts) and a model's score output (one vector per text, in order)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_TEXTS = 256
"""Texts per request (OpenAI allows 2,048; a 2-core worker embeds about 256 short
texts in a second)."""

EmbeddingText = Annotated[str, StringConstraints(min_length=1, max_length=100_000)]


class EmbeddingPayload(BaseModel):
    """An embeddings request as models receive it (RequestEnvelope.payload)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: list[EmbeddingText] = Field(min_length=1, max_length=MAX_TEXTS)


class EmbeddingOutput(BaseModel):
    """An embedding model's answer (Score.output)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    vectors: list[list[float]]
    """One vector per input text, in the input's order."""
    prompt_tokens: int = Field(ge=0)
    """Tokens read over all texts."""

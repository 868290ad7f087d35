"""The HTTP request body of ``POST /v1/infer/{endpoint}``, and readable validation errors."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StringConstraints,
    ValidationError,
)

from services.common.codec import summarise

MAX_ATTRIBUTES = 32

AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
AttributeValue = Annotated[str, StringConstraints(max_length=256)]


class InferRequest(BaseModel):
    """What a client sends: the model inputs and, optionally, a shorter deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: JsonValue
    """The payload every model of the endpoint scores (any JSON value)."""

    deadline_ms: StrictInt | None = Field(default=None, gt=0)
    """Relative milliseconds; at most the endpoint's deadline (longer ones are cut)."""

    attributes: Annotated[dict[AttributeKey, AttributeValue], Field(max_length=MAX_ATTRIBUTES)] = (
        Field(default_factory=dict)
    )
    """String tags for the rendezvous, e.g. a user id for sticky canary routing."""


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a judgement of the answer to an earlier request."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    request_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    """The ``request_id`` (or ``x-rdv-request-id``) of the answer being judged."""

    reward: float = Field(ge=-1e6, le=1e6)
    """E.g. 1 for thumbs up and 0 for thumbs down, or any score; higher is better."""

    label: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


def describe(exc: ValidationError) -> str:
    """The first few problems as ``field: message``; never echoes the input."""
    return summarise(exc, root="body")

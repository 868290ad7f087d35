"""Valid messages for tests, with only the fields a test cares about to change."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import JsonValue

from services.common.messages import (
    ErrorBody,
    ModelRegistration,
    RequestEnvelope,
    ReturnAddress,
    Role,
    Score,
    ScoreStatus,
    Timings,
)


def request(
    payload: JsonValue = None,
    *,
    request_id: str | None = None,
    endpoint: str = "demo",
    deadline_in_ms: int = 2000,
    reply_topic: str = "rdv.replies",
) -> RequestEnvelope:
    now = int(time.time() * 1000)
    rid = request_id or uuid.uuid4().hex
    return RequestEnvelope(
        request_id=rid,
        endpoint=endpoint,
        payload=payload,
        return_address=ReturnAddress(topic=reply_topic),
        deadline_epoch_ms=now + deadline_in_ms,
        created_ms=now,
        trace_id=rid,
    )


def score_for(
    req: RequestEnvelope,
    *,
    model: str = "echo",
    output: JsonValue = None,
    status: ScoreStatus = ScoreStatus.OK,
    error: ErrorBody | str | None = None,
    copy: bool = False,
) -> Score:
    """A score of ``req``; an ``error`` given as text is read as older workers send it
    (``"[code] message"`` or plain text: ``model_error``). ``copy``: it carries a copy
    of the request (``Score.request``), as this build's workers send."""
    now = time.time() * 1000
    return Score(
        request_id=req.request_id,
        endpoint=req.endpoint,
        model=model,
        model_version="1",
        role=Role.CHAMPION,
        status=status,
        output=output,
        error=error,
        timings=Timings(received_ms=now, started_ms=now, finished_ms=now),
        request=req.header() if copy else None,
    )


def registration(name: str) -> ModelRegistration:
    """A control entry registering an echo challenger ``name`` on ``demo``."""
    return ModelRegistration(
        name=name,
        version="1",
        role=Role.CHALLENGER,
        endpoints=["demo"],
        runtime="echo",
        changed_by="t",
        changed_ms=1,
    )


def policy_doc(**over: Any) -> dict[str, Any]:
    """A valid policy document for endpoint ``demo`` (fast, then fast or slow, then any),
    with top-level keys replaced by ``over``."""
    doc: dict[str, Any] = {
        "endpoint": "demo",
        "deadline_ms": 1000,
        "models": ["fast", "slow"],
        "stages": [
            {"until_ms": 300, "accept": ["fast"]},
            {"until_ms": 800, "accept": ["fast", "slow"]},
            {"until_ms": "deadline", "accept": "any"},
        ],
    }
    return doc | over

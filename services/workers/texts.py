"""The text a text model scores in a request's payload (ood, lexicon runtimes)."""

from __future__ import annotations

from pydantic import JsonValue

from services.workers.runtime import PredictionError


def payload_text(payload: JsonValue, field: str) -> str | PredictionError:
    """The text to score in one payload, or why there is none."""
    if isinstance(payload, dict) and "messages" in payload and field not in payload:
        return last_user_turn(payload["messages"])
    if isinstance(payload, dict) and "prompt" in payload and field not in payload:
        field = "prompt"  # a completion request (services.common.chat): its raw prompt
    text = payload.get(field) if isinstance(payload, dict) else payload
    if not isinstance(text, str):
        return PredictionError(f"payload must be a string or an object with a string {field!r}")
    if not text.strip():
        return PredictionError("payload text is empty")
    return text


def last_user_turn(messages: JsonValue) -> str | PredictionError:
    """The content of a chat conversation's last user message."""
    turns = messages if isinstance(messages, list) else []
    for turn in reversed(turns):
        if isinstance(turn, dict) and turn.get("role") == "user":
            content = turn.get("content")
            if isinstance(content, str) and content.strip():
                return content
            break
    return PredictionError("chat payload has no user message with text to score")

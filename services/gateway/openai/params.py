"""OpenAI chat parameters this gateway does not honour: each is accepted only at the
value that asks for nothing (e.g. ``logit_bias: {}``, ``store: false``), otherwise refused
with a 400 that names it; a parameter OpenAI's API does not define is refused too.
The parameters the gateway honours are the fields of ``OpenAIChatRequest``; messages
become the chat contract's here, with the same rule for their fields."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from services.gateway.errors import UnsupportedFeatureError
from services.gateway.openai.schemas import OpenAIMessage

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI's roles the chat models take (``developer`` is OpenAI's newer ``system``)."""

# a message's fields besides role and content -> whether a value asks for nothing
MESSAGE_NEUTRAL: Mapping[str, Callable[[object], bool]] = {
    "name": lambda v: v is None,
    "tool_calls": lambda v: v is None or v == [],
    "function_call": lambda v: v is None,
    "refusal": lambda v: v is None,
    "audio": lambda v: v is None,
    "annotations": lambda v: v is None or v == [],
}


def _empty(value: object) -> bool:
    return value is None or value in ([], {})


def _null(value: object) -> bool:
    return value is None


def _text_only(value: object) -> bool:
    return value is None or value == ["text"]


def _standard_tier(value: object) -> bool:
    return value in (None, "auto", "default")


def _not_stored(value: object) -> bool:
    return value in (None, False)


def _no_tool_call(value: object) -> bool:
    return value in (None, "none", "auto")


# parameter -> whether a value asks for nothing this gateway would have to do
NEUTRAL: Mapping[str, Callable[[object], bool]] = {
    "logit_bias": _empty,
    "functions": _empty,
    "function_call": _no_tool_call,
    "modalities": _text_only,
    "audio": _null,
    "prediction": _null,
    "reasoning_effort": _null,
    "service_tier": _standard_tier,
    "store": _not_stored,
    "metadata": _empty,  # kept with stored completions only, which are not kept here
    "web_search_options": _null,  # {} turns web search on
    "verbosity": _null,
    "prompt_cache_key": _null,
}


def refuse_unsupported(
    extra: Mapping[str, object],
    neutral_values: Mapping[str, Callable[[object], bool]] = NEUTRAL,
    prefix: str = "",
) -> None:
    """Raise ``UnsupportedFeatureError`` (a 400 naming the parameter) for the first
    field of ``extra`` (the body's fields the request model does not define) that asks
    for something; fields at their neutral value pass."""
    for name in sorted(extra):
        neutral = neutral_values.get(name)
        param = f"{prefix}{name}"
        if neutral is None:
            raise UnsupportedFeatureError(f"unrecognized request argument {param!r}", param=param)
        if not neutral(extra[name]):
            raise UnsupportedFeatureError(
                f"{param!r} is not supported by this gateway (accepted only when it asks "
                "for nothing, e.g. empty or null)",
                param=param,
            )


def chat_messages(messages: list[OpenAIMessage]) -> list[dict[str, str]]:
    """The conversation as the chat contract's messages (plain dicts, validated by
    ``ChatPayload``): text parts joined; a role or part the chat models cannot take
    (tool results, images, audio) refused with a 400 naming it."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        refuse_unsupported(message.model_extra or {}, MESSAGE_NEUTRAL, f"{where}.")
        role = ROLES.get(message.role)
        if role is None:
            raise UnsupportedFeatureError(
                f"{where}.role {message.role!r} is not supported; use one of {sorted(ROLES)}",
                param=f"{where}.role",
            )
        out.append({"role": role, "content": message_text(message, where)})
    return out


def message_text(message: OpenAIMessage, where: str) -> str:
    content = message.content
    if content is None:
        raise UnsupportedFeatureError(f"{where}.content is missing", param=f"{where}.content")
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        text = part.get("text")
        if part.get("type") != "text" or not isinstance(text, str) or len(part) != 2:
            raise UnsupportedFeatureError(
                f'{where}.content[{j}]: only text parts ({{"type": "text", "text": '
                "...}) are supported",
                param=f"{where}.content",
            )
        texts.append(text)
    return "".join(texts)

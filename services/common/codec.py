"""Bytes <-> messages. The only place that encodes or decodes a record.

Decoding either returns a valid message of the expected kind or raises
``MessageError``; no parser or validation error escapes. ``reason`` on the error
is ``"unsupported_version"`` for a schema version this build cannot read and
``"malformed"`` for everything else.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from services.common.errors import MessageError
from services.common.messages import (
    SCHEMA_VERSION,
    SCORE_VERSION,
    BaseMessage,
    ControlEntry,
    DeadLetter,
    Decision,
    Delta,
    Feedback,
    LearnedEntry,
    Message,
    ModelRegistration,
    PolicyEntry,
    Reply,
    ReplyRecord,
    RequestEnvelope,
    Score,
    StreamGrant,
)
from services.common.redact import redact

M = TypeVar("M", bound=BaseMessage)

SUPPORTED_VERSIONS: frozenset[int] = frozenset({SCHEMA_VERSION, SCORE_VERSION})
"""Every version some kind has; ``BaseMessage.VERSIONS`` says which a kind reads."""

MAX_ERROR_CHARS = 2000
MAX_DEAD_LETTER_VALUE = 256 * 1024
"""Bytes of a failed record's value a dead letter keeps (base64 makes them a third more)."""
MAX_DEAD_LETTER_KEY = 4096
"""Bytes of a failed record's key a dead letter keeps."""
_MAX_REPORTED_ERRORS = 3
_MAX_ERROR_MSG_CHARS = 160

_CONTROL_KINDS: dict[str, type[ModelRegistration] | type[PolicyEntry] | type[LearnedEntry]] = {
    "model": ModelRegistration,
    "policy": PolicyEntry,
    "learned": LearnedEntry,
}
_REPLY_KINDS: dict[str, type[Reply] | type[Delta] | type[StreamGrant]] = {
    "reply": Reply,
    "delta": Delta,
    "grant": StreamGrant,
}


def encode(msg: BaseMessage) -> bytes:
    """Compact UTF-8 JSON of a message, every field included, under its wire name
    (a field's alias, e.g. the envelope's ``deadline_epoch_ms`` as ``deadline_ms``)."""
    return msg.model_dump_json(by_alias=True).encode("utf-8")


def decode(data: bytes | None, kind: type[M]) -> M:
    """Parse ``data`` as a message of type ``kind``; raise ``MessageError`` otherwise."""
    obj = _parse(data)
    expected = kind_of(kind)
    if obj.get("kind") != expected:
        raise MessageError(f"expected kind {expected!r}, got {_short(obj.get('kind'))}")
    return _validate(obj, kind)


def decode_control(data: bytes | None) -> ControlEntry | None:
    """Decode a control-topic value; ``None`` for a tombstone (no value or empty value)."""
    if not data:
        return None
    return _decode_one_of(data, _CONTROL_KINDS)


def decode_reply_record(data: bytes | None) -> ReplyRecord:
    """Decode a record of a return address: a reply, or a streaming delta or grant."""
    return _decode_one_of(data, _REPLY_KINDS)


def _decode_one_of(data: bytes | None, kinds: Mapping[str, type[M]]) -> M:
    """Parse ``data`` as whichever message of ``kinds`` its ``kind`` names."""
    obj = _parse(data)
    kind = obj.get("kind")
    cls = kinds.get(kind) if isinstance(kind, str) else None
    if cls is None:
        expected = " or ".join(repr(k) for k in kinds)
        raise MessageError(f"expected kind {expected}, got {_short(kind)}")
    return _validate(obj, cls)


def message_key(msg: Message) -> bytes:
    """The Kafka key of a message: what it is partitioned and compacted by."""
    match msg:
        case (
            RequestEnvelope()
            | Score()
            | Decision()
            | Reply()
            | Feedback()
            | Delta()
            | StreamGrant()
        ):
            return msg.request_id.encode("utf-8")
        case ModelRegistration():
            return f"model/{msg.name}".encode()
        case PolicyEntry():
            return f"policy/{msg.endpoint}".encode()
        case LearnedEntry():
            return f"learned/{msg.endpoint}".encode()
        case DeadLetter():
            return b"" if msg.key is None else msg.key.encode("utf-8")


def make_dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: Exception,
    service: str,
    now_ms: int,
) -> DeadLetter:
    """A dead letter for the record at ``topic``/``partition``/``offset`` that failed.

    The value kept is at most ``MAX_DEAD_LETTER_VALUE`` bytes (the error says when it
    was cut): a record near the broker's size limit still gets a dead letter that fits.
    The origin's position is always there to read the whole record back."""
    text = redact(str(error))
    kept = value
    if value is not None and len(value) > MAX_DEAD_LETTER_VALUE:
        kept = value[:MAX_DEAD_LETTER_VALUE]
        note = f" [value cut to its first {MAX_DEAD_LETTER_VALUE} of {len(value)} bytes]"
        text = text[: MAX_ERROR_CHARS - len(note)] + note
    return DeadLetter(
        origin_topic=topic,
        origin_partition=partition,
        origin_offset=offset,
        error_code=str(getattr(error, "code", type(error).__name__)),
        error=text[:MAX_ERROR_CHARS],  # never a secret in a dead letter
        service=service,
        key=None if key is None else key[:MAX_DEAD_LETTER_KEY].decode("utf-8", errors="replace"),
        value_b64="" if kept is None else base64.b64encode(kept).decode("ascii"),
        failed_ms=now_ms,
    )


def kind_of(cls: type[BaseMessage]) -> str:
    """The ``kind`` discriminator a message class writes, e.g. ``"request"``."""
    return str(cls.model_fields["kind"].default)


def _parse(data: bytes | None) -> dict[str, Any]:
    """Bytes -> JSON object with a supported ``v``; kind and fields not yet checked."""
    if not data:
        raise MessageError("empty message")
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MessageError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"not JSON: {_short(str(exc))}") from None
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MessageError(f"schema version 'v' missing or not an integer: {_short(version)}")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_VERSIONS))
        raise MessageError(
            f"unsupported schema version {version} (supported: {supported})",
            reason="unsupported_version",
        )
    return obj


def _validate(obj: dict[str, Any], kind: type[M]) -> M:
    if obj["v"] not in kind.VERSIONS:
        supported = ", ".join(str(v) for v in sorted(kind.VERSIONS))
        raise MessageError(
            f"unsupported schema version {obj['v']} of a {kind_of(kind)} (supported: {supported})",
            reason="unsupported_version",
        )
    try:
        return kind.model_validate(obj, by_alias=True, by_name=False)  # wire names only
    except ValidationError as exc:
        raise MessageError(f"invalid {kind_of(kind)}: {summarise(exc)}") from None


def summarise(
    exc: ValidationError, root: str = "<root>", limit: int | None = _MAX_REPORTED_ERRORS
) -> str:
    """The first ``limit`` errors (None: all) as ``path: message``; never the input
    values. The one place pydantic errors become text, for every edge."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    shown = errors if limit is None else errors[:limit]
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or root}: "
        f"{e['msg'].removeprefix('Value error, ')[:_MAX_ERROR_MSG_CHARS]}"
        for e in shown
    ]
    if len(errors) > len(shown):
        parts.append(f"(+{len(errors) - len(shown)} more)")
    return "; ".join(parts)


def _short(value: object, limit: int = 80) -> str:
    """A repr of a value from the wire, cut so an error never echoes a whole payload."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Keeping secrets out of logs and dead letters: the last line of defence.

Secrets are held as ``SecretStr`` and never formatted on purpose; this module catches
the accidents. ``redact(text)`` replaces every registered secret (e.g. the SASL
password, registered when ``KafkaSettings`` is validated) and anything shaped like a
credential (``Bearer <token>``, ``x-api-key: <key>``, ``password=<value>``) with
``[redacted]``. The JSON log formatter runs it over every line; dead letters over their
error text. ``sensitive_name`` says whether a log field's name (``password``,
``api_key``, ``authorization``...) means its value is hidden whole.
"""

from __future__ import annotations

import json
import re
import threading

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 4  # shorter values would redact ordinary words

_SENSITIVE_NAME = re.compile(  # a whole name or its last part: not "max_tokens"
    r"(?:^|[_.-])(?:password|passwd|secret|token|api[_-]?key|authorization|credentials?)$", re.I
)
_CREDENTIAL = re.compile(
    r"""(?P<lead>\bbearer\s+|\b(?:x-api-key|api[_-]?key|password|passwd|secret)
        ["']?\s*[:=]\s*["']?)(?P<value>[^\s"',;}\]]+)""",
    re.I | re.X,
)
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """From now on, ``redact`` hides ``value`` wherever it appears."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _lock:  # and as it reads inside a JSON string (a log line)
            _secrets.update({value, json.dumps(value)[1:-1]})


def redact(text: str) -> str:
    """``text`` with every registered secret and credential-shaped value replaced."""
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: nested ones
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _CREDENTIAL.search(text) is None:
        return text
    return _CREDENTIAL.sub(lambda m: m["lead"] + REDACTED, text)


def sensitive_name(name: str) -> bool:
    """Whether a field called ``name`` holds a credential (its value is never shown)."""
    return _SENSITIVE_NAME.search(name) is not None

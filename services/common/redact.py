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


class _Secrets:
    """The registered secrets, longest first (a secret inside another is replaced after
    it). Registering replaces the tuple whole, under the lock; ``redact`` reads it as it
    is (one reference), so the hot path takes no lock and never sees a half update."""

    def __init__(self) -> None:
        self.longest_first: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, *values: str) -> None:
        with self._lock:
            known = {*self.longest_first, *values}
            self.longest_first = tuple(sorted(known, key=len, reverse=True))


_secrets = _Secrets()


def register_secret(value: str | None) -> None:
    """From now on, ``redact`` hides ``value`` wherever it appears."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _secrets.add(value, json.dumps(value)[1:-1])  # and as it reads in a JSON string


def redact(text: str) -> str:
    """``text`` with every registered secret and credential-shaped value replaced."""
    for secret in _secrets.longest_first:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _CREDENTIAL.sub(_hide_value, text)


def _hide_value(match: re.Match[str]) -> str:
    return match["lead"] + REDACTED


def sensitive_name(name: str) -> bool:
    """Whether a field called ``name`` holds a credential (its value is never shown)."""
    return _SENSITIVE_NAME.search(name) is not None

"""The gateway's API keys: where they come from, and how a presented key is checked.

Keys come from ``RDV_GATEWAY_API_KEYS`` (``name:role:key`` entries, comma-separated)
and/or the YAML file ``RDV_GATEWAY_API_KEYS_FILE``::

    keys:
      - name: web-frontend        # shows in metrics and logs, never the key
        role: client              # client | admin
        key_sha256: 3b4c...       # or `key: <the key>`; the digest keeps the file harmless
        rate_limit_per_s: 50      # optional: this key's own rate limit
        rate_limit_burst: 100

Only the SHA-256 digest of each key is kept in memory; a presented key is hashed and
compared with every digest in constant time (``hmac.compare_digest``). Keys are
random tokens (at least ``MIN_KEY_CHARS`` characters), so an unsalted digest is safe.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.codec import summarise
from services.common.errors import ConfigError
from services.gateway.settings import GatewaySettings

Role = Literal["client", "admin"]
ROLES: tuple[Role, ...] = ("client", "admin")
MIN_KEY_CHARS = 16
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"  # a safe metric label


@dataclass(frozen=True)
class ApiKey:
    """One key as the gateway knows it: its name, role, limits and digest only."""

    name: str
    role: Role
    digest: bytes = field(repr=False)
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None


def digest(key: str) -> bytes:
    """The SHA-256 digest a key is stored and compared as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """The configured keys; empty means API keys are off (the gateway is open)."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self.keys = tuple(keys)
        names = [k.name for k in self.keys]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ConfigError(f"API key names must be unique: {', '.join(dup)} repeat")
        if len({k.digest for k in self.keys}) < len(self.keys):
            raise ConfigError("two API key entries have the same key")

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, presented: str) -> ApiKey | None:
        """The key ``presented`` is, or None; every digest is compared (constant time)."""
        candidate = digest(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, candidate):
                found = key
        return found


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=_NAME)
    role: Role
    key: str | None = Field(default=None, min_length=MIN_KEY_CHARS)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    rate_limit_per_s: float | None = Field(default=None, gt=0)
    rate_limit_burst: int | None = Field(default=None, ge=1)

    def to_key(self) -> ApiKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        raw = digest(self.key) if self.key else bytes.fromhex(self.key_sha256 or "")
        return ApiKey(self.name, self.role, raw, self.rate_limit_per_s, self.rate_limit_burst)


def load_keys(settings: GatewaySettings) -> KeyRing:
    """Every key of ``settings.api_keys`` and ``settings.api_keys_file``. Error messages
    name the entry, never its key."""
    keys: list[ApiKey] = []
    if settings.api_keys is not None:
        keys += parse_inline(settings.api_keys.get_secret_value())
    if settings.api_keys_file is not None:
        keys += read_key_file(settings.api_keys_file)
    return KeyRing(keys)


def parse_inline(text: str) -> list[ApiKey]:
    """``name:role:key[,name:role:key...]`` (the key is everything after the 2nd colon)."""
    docs = []
    for i, entry in enumerate(e.strip() for e in text.split(",") if e.strip()):
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise ConfigError(f"RDV_GATEWAY_API_KEYS entry {i + 1}: expected name:role:key")
        docs.append({"name": parts[0].strip(), "role": parts[1].strip(), "key": parts[2]})
    return _entries(docs, "RDV_GATEWAY_API_KEYS")


def read_key_file(path: Path) -> list[ApiKey]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        problem = type(exc).__name__  # a YAML error quotes the line: it may hold a key
        raise ConfigError(f"cannot read the API key file {path}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ConfigError(f"{path}: expected a mapping with a list under `keys`")
    return _entries(doc["keys"], str(path))


def _entries(docs: Sequence[object], source: str) -> list[ApiKey]:
    keys = []
    for i, doc in enumerate(docs):
        try:
            keys.append(_Entry.model_validate(doc).to_key())
        except (ValidationError, ValueError) as exc:
            raise ConfigError(f"{source}: entry {i + 1}: {_describe(exc)}") from None
    return keys


def _describe(exc: Exception) -> str:
    """Locations and messages only, never the inputs (they may hold a key)."""
    return summarise(exc, root="entry") if isinstance(exc, ValidationError) else str(exc)

"""The control topic folded into its current state: models, policies, policy history."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from services.common.messages import ControlEntry, LearnedEntry, ModelRegistration, PolicyEntry

log = logging.getLogger("rdv.control")
T = TypeVar("T")

MODEL = "model/"
POLICY = "policy/"
POLICY_VERSION = "policy-version/"
LEARNED = "learned/"


def model_key(name: str) -> bytes:
    """The control key of model ``name``: what codec.message_key gives its registration,
    from the name alone (a tombstone has no registration to ask)."""
    return f"{MODEL}{name}".encode()


def policy_key(endpoint: str) -> bytes:
    """The control key of ``endpoint``'s policy, as codec.message_key gives an entry's."""
    return f"{POLICY}{endpoint}".encode()


def policy_version_key(endpoint: str, version: int) -> bytes:
    return f"{POLICY_VERSION}{endpoint}/{version:08d}".encode()


@dataclass
class ControlState:
    """The latest model registrations and policies, and every policy version seen."""

    models: dict[str, ModelRegistration] = field(default_factory=dict)
    policies: dict[str, PolicyEntry] = field(default_factory=dict)
    history: dict[str, dict[int, PolicyEntry]] = field(default_factory=dict)
    learned: dict[str, LearnedEntry] = field(default_factory=dict)

    def apply(self, key: bytes | None, entry: ControlEntry | None) -> str | None:
        """Fold one record in; returns ``"model"``, ``"policy"``, ``"learned"`` or None
        (history, or a key this build does not know)."""
        text = (key or b"").decode("utf-8", errors="replace")
        if text.startswith(LEARNED):
            endpoint = text.removeprefix(LEARNED)
            if entry is None:
                self.learned.pop(endpoint, None)
            elif isinstance(entry, LearnedEntry):
                self.learned[endpoint] = entry
            return "learned"
        if text.startswith(MODEL):
            name = text.removeprefix(MODEL)
            if entry is None:
                self.models.pop(name, None)
            elif isinstance(entry, ModelRegistration):
                self.models[name] = entry
            return "model"
        if text.startswith(POLICY_VERSION) and isinstance(entry, PolicyEntry):
            self.history.setdefault(entry.endpoint, {})[entry.version] = entry
            return None
        if text.startswith(POLICY):
            endpoint = text.removeprefix(POLICY)
            if entry is None:
                self.policies.pop(endpoint, None)
            elif isinstance(entry, PolicyEntry):
                self.policies[endpoint] = entry
                self.history.setdefault(endpoint, {})[entry.version] = entry
            return "policy"
        return None

    def next_version(self, endpoint: str) -> int:
        """The version the endpoint's next policy change gets."""
        seen = [*self.history.get(endpoint, {}), 0]
        current = self.policies.get(endpoint)
        return max(*seen, current.version if current else 0) + 1


def overlay(
    base: Mapping[str, T],
    current: Mapping[str, T],
    state: ControlState,
    build: Callable[[PolicyEntry], T],
    invalid: tuple[type[Exception], ...],
) -> dict[str, T]:
    """Per endpoint, what is in force: ``base`` (from the policy files) overlaid with
    ``build(entry)`` of each control policy. An entry ``build`` refuses (raising one of
    ``invalid``) is logged and its endpoint keeps what it had in ``current``."""
    out = dict(base)
    for endpoint, entry in state.policies.items():
        try:
            out[endpoint] = build(entry)
        except invalid as exc:
            log.error(
                "invalid policy entry ignored", extra={"endpoint": endpoint, "error": str(exc)}
            )
            if endpoint in current:
                out[endpoint] = current[endpoint]
    return out

"""Control changes, one implementation for ``rdv --direct`` and the gateway's control
API: register a model, promote, retire, set and roll back a policy, and read them back.

``Control`` reads the control topic's current state through a ``Ledger`` (Kafka in
production: services.control.store.KafkaLedger), rewrites the policy documents
(services.control.policies), validates them as the rendezvous will, and writes the
change. Changes made through one ``Control`` are serialised by a lock; versions are
computed from the state read just before the write. Starting or stopping a worker is
not a control change: the deployers do that (services.control.deployers).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.common.errors import ConfigError
from services.common.messages import ControlEntry, ModelRegistration, PolicyEntry, Role
from services.common.policy import parse_policy, read_documents
from services.common.spec import ModelSpec
from services.control.errors import ControlConflictError, ControlNotFoundError
from services.control.policies import champion_of, mentions, promote, retire
from services.control.state import ControlState, model_key, policy_key, policy_version_key

Doc = dict[str, Any]


class Ledger(Protocol):
    """Where the control state is read from and written to."""

    def read(self) -> ControlState:
        """The control topic from its start to its current end, folded."""

    def publish(self, entries: Sequence[tuple[bytes, ControlEntry | None]]) -> None:
        """Write entries (None: a tombstone); returns once all are stored."""


@dataclass(frozen=True)
class PolicyChange:
    """A new version of an endpoint's policy; ``fallback`` (promote): the old champion;
    ``restored`` (rollback): the version brought back."""

    endpoint: str
    version: int
    fallback: str | None = None
    restored: str | None = None


@dataclass(frozen=True)
class PolicyView:
    """An endpoint's policy in force: from the control topic (``entry``) or a file."""

    endpoint: str
    version: int
    policy: Doc
    entry: PolicyEntry | None = None
    history: list[PolicyEntry] = field(default_factory=list)

    def to_json(self) -> Doc:
        """What the control API answers and ``rdv policy show`` prints."""
        entry = self.entry
        return {
            "endpoint": self.endpoint,
            "version": self.version,
            "origin": "policy file" if entry is None else "control topic",
            "changed_by": None if entry is None else entry.changed_by,
            "changed_ms": None if entry is None else entry.changed_ms,
            "evidence": None if entry is None else entry.evidence,
            "policy": self.policy,
            "history": [
                {
                    "version": e.version,
                    "changed_by": e.changed_by,
                    "changed_ms": e.changed_ms,
                    "evidence": e.evidence,
                }
                for e in self.history
            ],
        }


def file_doc(endpoint: str, policies: Path) -> Doc | None:
    """The endpoint's document in the policy files, if any."""
    if policies.exists():
        for _, doc in read_documents(policies):
            if doc.get("endpoint") == endpoint:
                return dict(doc)
    return None


def checked_policy(endpoint: str, doc: object, source: str) -> Doc:
    """``doc`` as a new policy of ``endpoint``: one mapping naming that endpoint, valid."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source} must be one policy document (a mapping)")
    if doc.get("endpoint") != endpoint:
        raise ConfigError(f"{source} is the policy of {doc.get('endpoint')!r}, not {endpoint!r}")
    parse_policy(doc, source)
    return dict(doc)


class Control:
    """The control plane's changes over ``ledger``; ``policies``: the base policy files."""

    def __init__(
        self,
        ledger: Ledger,
        policies: Path,
        wall_ms: Callable[[], float] = lambda: time.time() * 1000,
    ) -> None:
        self.ledger = ledger
        self.policies = policies
        self._wall_ms = wall_ms
        self._lock = threading.Lock()

    # -- reading -------------------------------------------------------------------------

    def models(self) -> list[ModelRegistration]:
        return [reg for _, reg in sorted(self.ledger.read().models.items())]

    def show(self, endpoint: str) -> PolicyView:
        state = self.ledger.read()
        doc, version = self._current(state, endpoint)
        history = [e for _, e in sorted(state.history.get(endpoint, {}).items())]
        return PolicyView(endpoint, version, doc, state.policies.get(endpoint), history)

    # -- changes -------------------------------------------------------------------------

    def deploy(self, spec: ModelSpec, who: str) -> ModelRegistration:
        """Register ``spec`` (its role as given); its worker is started by a deployer."""
        reg = spec.registration(who, self._now())
        with self._lock:
            self.ledger.publish([(model_key(reg.name), reg)])
        return reg

    def promote(self, model: str, endpoints: Sequence[str] | None, who: str) -> list[PolicyChange]:
        """``model`` becomes the preferred answer of ``endpoints`` (default: every endpoint
        it is registered for); the old champion stays as fallback."""
        with self._lock:
            state = self.ledger.read()
            reg = state.models.get(model)
            if reg is not None and reg.sample < 1.0:
                raise ControlConflictError(
                    f"{model} scores only a {reg.sample:.0%} sample of requests (sample "
                    f"{reg.sample}): deploy it with sample 1 before promoting it"
                )
            targets = list(endpoints or (reg.endpoints if reg else []))
            if not targets:
                raise ControlNotFoundError(f"{model} is not registered: name the endpoint")
            rewritten = []  # every endpoint checked before anything is written
            for endpoint in targets:
                doc, current = self._current(state, endpoint)
                rewritten.append((endpoint, promote(doc, model), current, champion_of(doc)))
            changes, demoted = [], []
            for endpoint, doc, current, old in rewritten:
                version = self._write_policy(state, doc, who, current)
                changes.append(PolicyChange(endpoint, version, fallback=old))
                if old and old in state.models:
                    demoted.append(state.models[old].model_copy(update={"role": Role.CHALLENGER}))
            if reg is not None:
                demoted.append(reg.model_copy(update={"role": Role.CHAMPION}))
            now = self._now()
            regs = [r.model_copy(update={"changed_by": who, "changed_ms": now}) for r in demoted]
            self.ledger.publish([(model_key(r.name), r) for r in regs])
            return changes

    def retire(self, model: str, who: str) -> list[PolicyChange]:
        """``model`` out of every policy that names it (control topic or files), then
        unregistered; its worker is stopped by a deployer."""
        with self._lock:
            state = self.ledger.read()
            reg = state.models.get(model)
            docs = {}
            for endpoint in self._endpoints(state, reg.endpoints if reg else []):
                doc, current = self._current(state, endpoint)
                if mentions(doc, model):
                    docs[endpoint] = (retire(doc, model), current)  # all checked first
            if reg is None and not docs:
                raise ControlNotFoundError(f"{model} is neither registered nor in any policy")
            changes = [
                PolicyChange(e, self._write_policy(state, doc, who, current))
                for e, (doc, current) in sorted(docs.items())
            ]
            self.ledger.publish([(model_key(model), None)])
            return changes

    def set_policy(
        self, endpoint: str, doc: object, who: str, evidence: Doc | None = None
    ) -> PolicyChange:
        """``doc`` (checked: it names ``endpoint`` and is valid) as the endpoint's policy;
        ``evidence``: why, when a check made the change (kept in the entry)."""
        new = checked_policy(endpoint, doc, f"the new policy of {endpoint}")
        with self._lock:
            state = self.ledger.read()
            try:
                _, current = self._current(state, endpoint)
            except ControlNotFoundError:
                current = 0  # a new endpoint
            return PolicyChange(endpoint, self._write_policy(state, new, who, current, evidence))

    def rollback(self, endpoint: str, who: str) -> PolicyChange:
        """The version before the one in force, written again as a new version (before
        the first control change of an endpoint: its policy file's)."""
        with self._lock:
            state = self.ledger.read()
            _, current = self._current(state, endpoint)
            earlier = [v for v in state.history.get(endpoint, {}) if v < current]
            if earlier:
                doc, label = dict(state.history[endpoint][max(earlier)].policy), str(max(earlier))
            else:
                base = file_doc(endpoint, self.policies)
                if base is None or endpoint not in state.policies:
                    raise ControlConflictError(f"{endpoint}: no earlier version to roll back to")
                doc, label = base, f"{base.get('version', 1)} (the policy file)"
            version = self._write_policy(state, doc, who, current)
            return PolicyChange(endpoint, version, restored=label)

    # -- plumbing ------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self._wall_ms())

    def _current(self, state: ControlState, endpoint: str) -> tuple[Doc, int]:
        """The endpoint's policy in force as a document, and its version."""
        entry = state.policies.get(endpoint)
        if entry is not None:
            return dict(entry.policy), int(entry.version)
        doc = file_doc(endpoint, self.policies)
        if doc is not None:
            return doc, int(doc.get("version", 1))
        raise ControlNotFoundError(
            f"no policy for endpoint {endpoint!r} (control topic or {self.policies})"
        )

    def _endpoints(self, state: ControlState, registered: Sequence[str]) -> list[str]:
        """Every endpoint with a policy in force, the registered ones first."""
        docs = read_documents(self.policies) if self.policies.exists() else []
        files = [str(d.get("endpoint")) for _, d in docs]
        known = [*registered, *state.policies, *files]
        return list(dict.fromkeys(e for e in known if e in state.policies or e in files))

    def _write_policy(
        self, state: ControlState, doc: Doc, who: str, after: int, evidence: Doc | None = None
    ) -> int:
        """Validate and write a new version of an endpoint's policy (above ``after``, the
        version in force, which may be a policy file's); returns the version."""
        endpoint = str(doc["endpoint"])
        version = max(state.next_version(endpoint), after + 1)
        body = {k: v for k, v in doc.items() if k != "version"}
        parse_policy({**body, "version": version}, f"the new policy of {endpoint}")
        entry = PolicyEntry(
            endpoint=endpoint,
            version=version,
            policy=body,
            changed_by=who,
            changed_ms=self._now(),
            evidence=evidence,
        )
        keys = [policy_key(endpoint), policy_version_key(endpoint, version)]
        self.ledger.publish([(k, entry) for k in keys])
        state.apply(policy_key(endpoint), entry)
        return version

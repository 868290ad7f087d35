"""Endpoints as data: each policy document (YAML or JSON, see deploy/policies/) names an
endpoint, its maximum deadline, its roster and its OOD gate. The gateway needs only that
much; the rendezvous reads the whole document as its policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import ConfigError
from services.common.messages import NAME_PATTERN

SUFFIXES = (".yaml", ".yml", ".json")


class GateSpec(BaseModel):
    """The part of a policy's OOD gate the gateway needs: which model is the detector."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    detector: str


class EndpointSpec(BaseModel):
    """An endpoint the gateway serves: the longest deadline a request may get, its roster
    (models a chat request may name, listed by ``/v1/models``) and its OOD gate's
    detector, which scores requests but never answers (so it is not listed)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    endpoint: str = Field(pattern=NAME_PATTERN)
    deadline_ms: int = Field(ge=1, le=600_000)
    models: list[str] = Field(default_factory=list)
    """The roster: models expected to score this endpoint's requests."""
    ood: GateSpec | None = None

    @property
    def answering_models(self) -> list[str]:
        """The roster without the OOD detector (it scores requests, it never answers)."""
        detector = None if self.ood is None else self.ood.detector
        return [m for m in self.models if m != detector]


def read_documents(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The policy documents of a file, or of every *.yaml/*.yml/*.json in a folder."""
    files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES) if path.is_dir() else [path]
    docs: list[tuple[Path, dict[str, Any]]] = []
    for file in files:
        try:
            raw = file.read_bytes()
            data = json.loads(raw) if file.suffix == ".json" else yaml.safe_load(raw)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read policy file {file}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"policy file {file} must hold one mapping (an object)")
        docs.append((file, data))
    if not docs:
        raise ConfigError(f"no policy files (*.yaml, *.yml, *.json) in {path}")
    return docs


def load_endpoints(path: Path) -> dict[str, EndpointSpec]:
    """Endpoint name -> spec, from a policy file or folder; duplicates are an error."""
    out: dict[str, EndpointSpec] = {}
    for file, data in read_documents(path):
        try:
            spec = EndpointSpec.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"invalid policy file {file}: {exc}") from exc
        if spec.endpoint in out:
            raise ConfigError(f"endpoint {spec.endpoint!r} is defined twice ({file})")
        out[spec.endpoint] = spec
    return out

"""Model specs: which model a worker serves, for which endpoints, in which role.

A spec is a YAML (or JSON) file::

    name: fast                  # the model's name: [a-z0-9][a-z0-9_.-]{0,63}
    version: "1"                # free text, default "1"
    runtime: echo               # a registered runtime, or "package.module:Class"
    role: champion              # champion | challenger | canary | detector | decoy
    endpoints: [demo]           # the endpoints whose requests it scores (at least one)
    params: {latency_ms: 2}     # runtime-specific, checked by the runtime
    batch: {max_size: 32, max_wait_ms: 0}   # the micro-batch window (defaults shown)
    sample: 1                   # the share of requests it scores, in (0, 1] (default 1)

or, for quick demos, the inline form ``<runtime>:<key>=<value>,...``::

    echo:name=fast,role=champion,endpoints=demo,latency_ms=2
    latency:name=slow,role=challenger,endpoints=demo+chat,latency_ms=100,slow_share=0.2,slow_ms=900

where ``name``, ``version``, ``role``, ``sample`` and ``endpoints`` (several joined by
``+``) are spec fields, ``max_size`` and ``max_wait_ms`` set the batch window, and
every other key is a runtime param whose value is read as JSON when it parses (``2``,
``0.5``, ``true``) and as a string otherwise. An argument ending in ``.yaml``,
``.yml`` or ``.json``, or naming an existing file, is a file; anything else is the
inline form. Every problem is a ``ConfigError`` that says what to fix.

``sample: 0.1`` makes a sampled shadow: the model scores only a stable 10% of the
requests (services.common.sampling) and sends a ``skipped`` score (``not_sampled``)
for the others. A champion answers every request, so its sample must be 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.codec import summarise
from services.common.errors import ConfigError
from services.common.messages import ModelRegistration, Name, Role
from services.common.runtimes import is_runtime_ref, runtime_names

FILE_SUFFIXES = (".yaml", ".yml", ".json")
_SPEC_KEYS = ("name", "version", "role")
_NUMBER_KEYS = ("sample",)
_BATCH_KEYS = ("max_size", "max_wait_ms")


class BatchSpec(BaseModel):
    """The micro-batch window: up to ``max_size`` requests, waiting ``max_wait_ms``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_size: int = Field(default=32, ge=1, le=10_000)
    max_wait_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)


class ModelSpec(BaseModel):
    """One model as a worker serves it."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    name: Name
    version: str = Field(default="1", min_length=1, max_length=64)
    runtime: str
    role: Role
    endpoints: list[Name] = Field(min_length=1)
    params: dict[str, JsonValue] = Field(default_factory=dict)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    sample: float = Field(default=1.0, gt=0.0, le=1.0)  # the share it scores (sampling.py)

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if not is_runtime_ref(value):
            raise ValueError(
                f"unknown runtime {value!r}; known: {', '.join(runtime_names())} "
                "(or 'package.module:Class')"
            )
        return value

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"endpoints are listed twice: {value}")
        return value

    @field_validator("sample", mode="before")
    @classmethod
    def _sample_is_a_number(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"sample must be a number in (0, 1] (e.g. 0.1: 10% of requests), not {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _champion_scores_all(self) -> Self:
        if (problem := self._sampled_champion()) is not None:
            raise ValueError(problem)
        return self

    def _sampled_champion(self) -> str | None:
        if self.role is Role.CHAMPION and self.sample < 1.0:
            return (
                f"a champion answers every request, so its sample must be 1, not "
                f"{self.sample}: sample a challenger, canary or decoy instead"
            )
        return None

    @property
    def group_id(self) -> str:
        """The model's consumer group on the requests topic (before the topic prefix)."""
        return f"rdv.model.{self.name}"

    def registration(self, changed_by: str, changed_ms: int) -> ModelRegistration:
        """The control-topic entry announcing this model (checked again: a role given
        with ``model_copy``, as ``rdv deploy --role`` does, skips validation)."""
        if (problem := self._sampled_champion()) is not None:
            raise ConfigError(f"cannot register {self.name}: {problem}")
        return ModelRegistration(
            name=self.name,
            version=self.version,
            role=self.role,
            endpoints=self.endpoints,
            runtime=self.runtime,
            params=self.params,
            sample=self.sample,
            changed_by=changed_by,
            changed_ms=changed_ms,
        )


def load_spec(arg: str) -> ModelSpec:
    """A spec from a file path or the inline form (see the module docstring)."""
    if not arg.strip():
        raise ConfigError("empty model spec: give a YAML file or runtime:key=value,...")
    path = Path(arg)
    if path.suffix in FILE_SUFFIXES or path.is_file():
        return load_spec_file(path)
    return parse_inline(arg)


def load_spec_file(path: Path) -> ModelSpec:
    """Read a YAML or JSON spec file."""
    try:
        raw = path.read_bytes()
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read model spec {path}: {exc.strerror or exc}") from None
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model spec {path} is not valid YAML/JSON: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model spec {path} must hold one mapping, not {type(data).__name__}")
    return _validate(data, str(path))


def parse_inline(text: str) -> ModelSpec:
    """Parse ``runtime:key=value,...`` (see the module docstring)."""
    runtime, _, rest = text.partition(":")
    runtime = runtime.strip()
    if not runtime:
        raise ConfigError(f"inline model spec {text!r} must start with a runtime name")
    fields: dict[str, Any] = {"runtime": runtime}
    params: dict[str, JsonValue] = {}
    batch: dict[str, JsonValue] = {}
    seen: set[str] = set()
    for part in (p for p in rest.split(",") if p.strip()):
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not key:
            raise ConfigError(f"inline model spec: expected key=value, got {part.strip()!r}")
        if key in seen:
            raise ConfigError(f"inline model spec: {key!r} is given twice")
        seen.add(key)
        if key in _SPEC_KEYS:
            fields[key] = value
        elif key in _NUMBER_KEYS:
            fields[key] = _scalar(value)
        elif key == "endpoints":
            fields[key] = [e for e in value.split("+") if e]
        elif key in _BATCH_KEYS:
            batch[key] = _scalar(value)
        else:
            params[key] = _scalar(value)
    return _validate({**fields, "params": params, "batch": batch}, f"{text!r}")


def _scalar(value: str) -> JsonValue:
    """``2`` -> 2, ``0.5`` -> 0.5, ``true`` -> True, anything else stays a string."""
    try:
        parsed: JsonValue = json.loads(value)
    except ValueError:
        return value
    if isinstance(parsed, bool | int) or (isinstance(parsed, float) and math.isfinite(parsed)):
        return parsed
    return value


def _validate(data: dict[str, Any], source: str) -> ModelSpec:
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid model spec {source}: {summarise(exc)}") from None

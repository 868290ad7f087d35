"""The one small interface every model implements, and the registry that names them.

A runtime adapts a model to the worker, as MLServer's ``MLModel`` does::

    class MyModel(ModelRuntime):
        def load(self) -> None:          # read weights, warm up; then
            super().load()               # ... mark the model ready
        def predict_batch(self, payloads):
            return [answer(p) for p in payloads]

``predict_batch`` gets the payloads of one micro-batch and returns one entry per
payload, in order: the output (any JSON value) or a ``PredictionError`` for a payload
it could not score. Raising fails the whole batch. ``params`` is the spec's
runtime-specific mapping; a runtime validates it in ``__init__`` and raises
``ConfigError`` when it cannot use it (no I/O there: loading happens in ``load``).

The registry of runtime names (services.common.runtimes) maps names to
``"module:Class"`` import strings, imported here only when a spec uses them, so heavy
runtimes (torch) cost nothing to the others. A spec may also name a runtime class
directly as ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TypeAlias, TypeVar

from pydantic import BaseModel, JsonValue, ValidationError

from services.common.codec import summarise
from services.common.errors import ConfigError, RendezvousError
from services.common.runtimes import runtime_names, target_of

Params: TypeAlias = Mapping[str, JsonValue]
P = TypeVar("P", bound=BaseModel)


class PredictionError(RendezvousError):
    """A model could not score a request: returned in place of one output, or raised
    for the whole batch. Becomes an ``error`` score, never a dead letter."""

    code = "prediction_failed"


Prediction: TypeAlias = JsonValue | PredictionError
"""What ``predict_batch`` gives for one payload: its output or why it failed."""


class ModelRuntime(ABC):
    """A loaded model that scores micro-batches of request payloads."""

    def __init__(self, params: Params) -> None:
        self.params = dict(params)
        self._ready = False

    @property
    def ready(self) -> bool:
        """True between a successful ``load()`` and ``unload()``."""
        return self._ready

    def load(self) -> None:
        """Make the model able to predict (subclasses load first, then call super)."""
        self._ready = True

    @abstractmethod
    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        """One output or ``PredictionError`` per payload, in order."""

    def unload(self) -> None:
        """Release what ``load()`` took (subclasses call super first). Idempotent."""
        self._ready = False


def parse_params(model: type[P], params: Params, runtime: str) -> P:
    """Validate a runtime's params against a pydantic model; ``ConfigError`` if invalid."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise ConfigError(f"invalid params for runtime {runtime!r}: {summarise(exc)}") from None


def resolve_runtime(name: str) -> type[ModelRuntime]:
    """Import the class a runtime name (or ``"module:Class"``) stands for."""
    target = target_of(name)
    if target is None:
        raise ConfigError(f"unknown runtime {name!r}; known: {', '.join(runtime_names())}")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError(f"runtime {name!r} cannot be imported ({target}): {exc}") from exc
    except AttributeError:
        raise ConfigError(f"runtime {name!r}: {module_name} has no {attr!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, ModelRuntime)):
        raise ConfigError(f"runtime {name!r}: {target} is not a ModelRuntime subclass")
    return cls


def create_runtime(name: str, params: Params) -> ModelRuntime:
    """A new, not yet loaded model of runtime ``name`` with its ``params``."""
    return resolve_runtime(name)(params)

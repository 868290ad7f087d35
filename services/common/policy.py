"""The policy document, one contract for every service: one YAML/JSON document per endpoint.

A policy is a schedule over the time elapsed since the request reached the
rendezvous (see deploy/policies/demo.yaml for an annotated example)::

    endpoint: demo            # an endpoint name (services.common.messages.NAME_PATTERN)
    deadline_ms: 1000         # the endpoint's longest deadline; a request may ask for less
    version: 1                # optional (default 1), recorded in decisions
    models: [fast, slow]      # the roster: models expected to score every request
    stages:                   # non-empty; until_ms strictly increasing, < deadline_ms
      - {until_ms: 300, accept: [fast]}        # before 300 ms only fast is acceptable
      - {until_ms: 800, accept: [fast, slow]}  # list order = preference
      - {until_ms: deadline, accept: any}      # the last stage, and only it, runs to the deadline
    default:                  # optional; exactly one of error / output
      error: {code: deadline_exceeded, message: "no acceptable answer by the deadline"}
      # output: <any JSON>    # a configured safe reply instead of an error
    canary:                   # optional
      model: slow             # the challenger that gets a share of the answers
      share: 0.05             # 0 < share < 1
      sticky_attribute: user  # optional RequestEnvelope.attributes key
    bandit:                   # needed by (only by) a stage with pick: bandit
      reward: bernoulli       # bernoulli (0/1 rewards) or gaussian (real rewards)
      min_share: 0.02         # every arm keeps at least this share (exploration)
      champion: fast          # optional, with champion_floor: its least share
      champion_floor: 0.2
      context:                # optional: learn per bucket, by one of
        attribute: tier       #   an attribute's value (listed values; others: "other")
        values: [free, pro]
        # ood_score: [0.5, 1.0]   # or the OOD detector's score, cut at these edges
    ood:                      # optional: act on an out-of-distribution detector's verdict
      detector: ood           # the detector model (its score output carries is_ood)
      wait_ms: 500            # answers wait for the detector at most this long
      when_flagged:           # exactly one of
        output: {text: "I can help with banking, travel and ..."}   # a safe reply
        # model: smol-tight   # or a named fallback model's answer

While the detector has not reported and ``wait_ms`` has not passed, no answer is given
(the detector's own score, or the deadline, ends the wait). A flagged request gets the
``when_flagged`` answer; an unflagged one, or one whose detector failed or stayed
silent past ``wait_ms``, follows the stages.

A stage with ``pick: bandit`` (at most one; its ``accept`` a list of two or more
models, the arms) lets one of its models answer, drawn by Thompson sampling on the
feedback rewards (services.common.bandit): only the drawn arm's ok score answers in that
stage; when the drawn arm fails the next stage applies.

``accept: any`` means any roster model, or any model at all when the roster is empty.
When the roster is non-empty, every model named in an accept list or as the canary
must be on it. Documents are strict: an unknown key is an error, and
every error is a ``ConfigError`` that names the file (or control entry) it came from.
The same strict schema reads policy files (``load_policies``) and control entries
(``policy_from_entry``); the rendezvous decides by it, the gateway serves its projection
(services.common.endpoints), the control plane and compare check and replay it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from services.common.codec import summarise
from services.common.errors import ConfigError
from services.common.messages import ErrorBody, Name, PolicyEntry

MAX_DEADLINE_MS = 600_000  # the longest deadline an endpoint may have
SUFFIXES = (".yaml", ".yml", ".json")

Millis = Annotated[int, Field(strict=True, ge=1, le=MAX_DEADLINE_MS)]


def _one_error(expected: str) -> WrapValidator:
    """Report a union's failure as one plain message instead of one per branch."""

    def validate(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"must be {expected}, not {value!r}"[:200]) from None

    return WrapValidator(validate)


Until = Annotated[
    Millis | Literal["deadline"],
    _one_error(f"a whole number of ms from 1 to {MAX_DEADLINE_MS}, or 'deadline'"),
]
Accept = Annotated[
    Annotated[tuple[Name, ...], Field(min_length=1)] | Literal["any"],
    _one_error("a non-empty list of model names, or 'any'"),
]


class _Strict(BaseModel):
    """Frozen, unknown keys rejected, finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Stage(_Strict):
    """Until ``until_ms`` of elapsed time (or the deadline), these models are acceptable:
    the most preferred first (``pick: preference``), or one drawn by the bandit."""

    until_ms: Until
    accept: Accept
    pick: Literal["preference", "bandit"] = "preference"

    @model_validator(mode="after")
    def _no_repeats(self) -> Self:
        if self.accept != "any" and len(set(self.accept)) != len(self.accept):
            raise ValueError(f"accept names a model twice: {list(self.accept)}")
        return self


class DefaultError(_Strict):
    """The error a client gets when no acceptable answer exists."""

    code: str = Field(min_length=1)
    message: str = Field(min_length=1)


class DefaultAnswer(_Strict):
    """What to answer when the schedule ends with nothing acceptable."""

    error: DefaultError | None = None
    output: JsonValue = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        has_output = "output" in self.model_fields_set
        if (self.error is None) == (not has_output):
            raise ValueError("default needs exactly one of 'error' or 'output'")
        return self

    def error_body(self) -> ErrorBody | None:
        """The error as it goes into a Reply; None when the default is an output."""
        if self.error is None:
            return None
        return ErrorBody(code=self.error.code, message=self.error.message)


DEFAULT_ANSWER = DefaultAnswer(
    error=DefaultError(code="deadline_exceeded", message="no acceptable answer by the deadline")
)


class Canary(_Strict):
    """A challenger whose answer is preferred for a fixed share of requests."""

    model: Name
    share: float = Field(gt=0.0, lt=1.0)
    sticky_attribute: str | None = Field(default=None, min_length=1)


class BanditContext(_Strict):
    """What a bandit learns per: an attribute's listed values, or OOD-score buckets."""

    attribute: str | None = Field(default=None, min_length=1)
    values: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field(
        default=(), max_length=32
    )
    ood_score: tuple[float, ...] | None = Field(default=None, min_length=1, max_length=16)

    @model_validator(mode="after")
    def _one_feature(self) -> Self:
        if (self.attribute is None) == (self.ood_score is None):
            raise ValueError("context needs exactly one of 'attribute' or 'ood_score'")
        if self.attribute is not None and not self.values:
            raise ValueError("context: an attribute needs its 'values'")
        if self.attribute is None and self.values:
            raise ValueError("context: 'values' goes with 'attribute'")
        edges = self.ood_score or ()
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("context: ood_score edges must increase")
        if len(set(self.values)) != len(self.values):
            raise ValueError("context: values must not repeat")
        return self


class Bandit(_Strict):
    """How the bandit stage draws its arm (services.common.bandit)."""

    reward: Literal["bernoulli", "gaussian"] = "bernoulli"
    min_share: float = Field(default=0.0, ge=0.0, lt=0.5)
    champion: Name | None = None
    champion_floor: float = Field(default=0.0, ge=0.0, lt=1.0)
    context: BanditContext | None = None

    @model_validator(mode="after")
    def _floor_needs_champion(self) -> Self:
        if self.champion_floor > 0 and self.champion is None:
            raise ValueError("bandit: champion_floor needs a champion")
        return self


class WhenFlagged(_Strict):
    """The answer to a request the detector flags: a safe reply or a fallback model."""

    output: JsonValue = None
    model: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        has_output = "output" in self.model_fields_set
        if (self.model is None) == (not has_output):
            raise ValueError("when_flagged needs exactly one of 'output' or 'model'")
        return self


class OodGate(_Strict):
    """Wait up to ``wait_ms`` for ``detector``; a flagged request gets ``when_flagged``."""

    detector: Name
    wait_ms: Millis
    when_flagged: WhenFlagged


class Policy(_Strict):
    """One endpoint's rendezvous policy (the module docstring shows the document)."""

    endpoint: Name
    deadline_ms: Millis
    version: int = Field(default=1, strict=True, ge=1)
    models: tuple[Name, ...] = ()
    stages: tuple[Stage, ...]
    default: DefaultAnswer = DEFAULT_ANSWER
    canary: Canary | None = None
    ood: OodGate | None = None
    bandit: Bandit | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models names a model twice: {list(self.models)}")
        self._check_schedule()
        self._check_roster()
        self._check_gate()
        self._check_bandit()
        return self

    def bandit_stage(self) -> int | None:
        """The index of the stage that picks by bandit, if one does."""
        return next((i for i, s in enumerate(self.stages) if s.pick == "bandit"), None)

    def _check_bandit(self) -> None:
        picks = [i for i, s in enumerate(self.stages) if s.pick == "bandit"]
        if len(picks) > 1:
            raise ValueError(f"stages {picks}: at most one stage may pick by bandit")
        bandit = self.bandit
        if not picks:
            if bandit is not None:
                raise ValueError("bandit is set but no stage has pick: bandit")
            return
        if bandit is None:
            raise ValueError(f"stage {picks[0]} picks by bandit: the policy needs 'bandit'")
        arms = self.stages[picks[0]].accept
        if arms == "any" or len(arms) < 2:
            raise ValueError(f"stage {picks[0]}: a bandit stage lists two or more models")
        if bandit.min_share * len(arms) > 1:
            raise ValueError(f"bandit: min_share {bandit.min_share} x {len(arms)} arms > 1")
        if bandit.champion is not None:
            if bandit.champion not in arms:
                raise ValueError(f"bandit: champion {bandit.champion!r} is not an arm {arms}")
            if bandit.champion_floor + (len(arms) - 1) * bandit.min_share > 1:
                raise ValueError("bandit: champion_floor + the other arms' min_share > 1")
        context = bandit.context
        if context is not None and context.ood_score is not None and self.ood is None:
            raise ValueError("bandit: context ood_score needs the policy's ood gate")

    def _check_schedule(self) -> None:
        if not self.stages:
            raise ValueError("stages must not be empty")
        *body, last = self.stages
        if last.until_ms != "deadline":
            raise ValueError("the last stage must have until_ms: deadline")
        previous = 0
        for index, stage in enumerate(body):
            if stage.until_ms == "deadline":
                raise ValueError(f"stage {index}: only the last stage may run to the deadline")
            if stage.until_ms <= previous:
                raise ValueError(f"stage {index}: until_ms must increase ({stage.until_ms})")
            if stage.until_ms >= self.deadline_ms:
                raise ValueError(
                    f"stage {index}: until_ms {stage.until_ms} must be below "
                    f"deadline_ms {self.deadline_ms}"
                )
            previous = stage.until_ms

    def _check_gate(self) -> None:
        gate = self.ood
        if gate is None:
            return
        if gate.wait_ms >= self.deadline_ms:
            raise ValueError(
                f"ood: wait_ms {gate.wait_ms} must be below deadline_ms {self.deadline_ms}"
            )
        fallback = gate.when_flagged.model
        if fallback is not None and fallback == gate.detector:
            raise ValueError("ood: the fallback model cannot be the detector")
        if self.models:
            missing = [m for m in (gate.detector, fallback) if m and m not in self.models]
            if missing:
                raise ValueError(f"ood: models {missing} are not in models")

    def _check_roster(self) -> None:
        if not self.models:
            return
        roster = set(self.models)
        for index, stage in enumerate(self.stages):
            unknown = [] if stage.accept == "any" else [m for m in stage.accept if m not in roster]
            if unknown:
                raise ValueError(f"stage {index}: models {unknown} are not in models")
        if self.canary is not None and self.canary.model not in roster:
            raise ValueError(f"canary model {self.canary.model!r} is not in models")


def parse_policy(data: Mapping[str, Any], source: str) -> Policy:
    """Validate one policy document; ``source`` (a file, a control key) names it in errors."""
    try:
        return Policy.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(
            f"invalid policy in {source}: {summarise(exc, root='<document>', limit=None)}"
        ) from None


def policy_from_entry(entry: PolicyEntry) -> Policy:
    """The policy a control entry carries; the entry's version wins over the document's."""
    source = f"control entry policy/{entry.endpoint}"
    policy = parse_policy({**entry.policy, "version": entry.version}, source)
    if policy.endpoint != entry.endpoint:
        raise ConfigError(f"invalid policy in {source}: it names endpoint {policy.endpoint!r}")
    return policy


def check_policy_entry(entry: object) -> None:
    """Raises ConfigError for a policy control entry that ``policy_from_entry`` refuses;
    other entries pass (a control follower's ``check``)."""
    if isinstance(entry, PolicyEntry):
        policy_from_entry(entry)


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


def load_policies(path: Path) -> dict[str, Policy]:
    """Endpoint -> policy, from a policy file or a folder of them; duplicates are an error."""
    out: dict[str, Policy] = {}
    origin: dict[str, Path] = {}
    for file, data in read_documents(path):
        policy = parse_policy(data, str(file))
        if policy.endpoint in out:
            raise ConfigError(
                f"endpoint {policy.endpoint!r} is defined twice ({origin[policy.endpoint]}, {file})"
            )
        out[policy.endpoint] = policy
        origin[policy.endpoint] = file
    return out

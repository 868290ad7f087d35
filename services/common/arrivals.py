"""What ``services.common.decide`` reads of a request: a narrow, read-only view of its
arrivals, so the decision needs neither the wire messages nor the rendezvous's store.

``RequestView`` and ``Arrival`` are protocols: the rendezvous's ``Mailbox`` (and its
``ScoreArrival``) satisfies them as it is, with no copy per decision.
``RequestSnapshot`` and ``Arrived`` are plain frozen ones for callers that build a
request by hand (``services.compare.counterfactual``, tests). Times are monotonic ms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import JsonValue

from services.common.messages import ErrorBody, OodCheck, Role, ScoreStatus


@dataclass(frozen=True, slots=True)
class Grant:
    """The model a streaming request's answer was granted to (decide.stream_grant), and
    what the OOD gate had found when it was granted."""

    model: str
    ood: OodCheck | None = None


class Arrival(Protocol):
    """One model's (first) score, as the decision reads it, and when it arrived."""

    @property
    def status(self) -> ScoreStatus: ...

    @property
    def output(self) -> JsonValue: ...  # the model's answer; None unless status is ok

    @property
    def role(self) -> Role: ...

    @property
    def error(self) -> ErrorBody | None: ...

    @property
    def at_ms(self) -> float: ...


class RequestView(Protocol):
    """One open request, as the decision reads it."""

    @property
    def request_id(self) -> str: ...

    @property
    def attributes(self) -> Mapping[str, str]: ...  # the canary's sticky key is one

    @property
    def streams(self) -> bool: ...  # the client asked for a streamed answer

    @property
    def arrived_ms(self) -> float: ...  # the request's clock starts here

    @property
    def deadline_at_ms(self) -> float: ...  # the request's own deadline

    @property
    def grant(self) -> Grant | None: ...  # a streaming request's granted model, once chosen

    @property
    def scores(self) -> Mapping[str, Arrival]: ...  # model -> its first score, arrival order


@dataclass(frozen=True, slots=True)
class Arrived:
    """An ``Arrival`` built by hand."""

    status: ScoreStatus
    at_ms: float
    output: JsonValue = None
    role: Role = Role.CHAMPION
    error: ErrorBody | None = None


@dataclass(frozen=True, slots=True)
class RequestSnapshot:
    """A ``RequestView`` built by hand (``scores`` in arrival order)."""

    request_id: str
    arrived_ms: float
    deadline_at_ms: float
    scores: Mapping[str, Arrived] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)
    streams: bool = False
    grant: Grant | None = None

"""The message contract: every record on every topic is one of these models.

Each top-level message carries ``v`` (schema version) and ``kind`` (what it is).
Models are frozen and ignore unknown fields, so a newer build of the same
schema version may add optional fields without breaking older readers. A change
that older readers cannot ignore needs a new ``v`` for that kind, and this build
keeps reading the versions before it (``VERSIONS``): scores are v2 (``error`` an
object ``{code, message}``) and v1 scores (``error`` as text) are still read. Times are
epoch milliseconds. Bytes on the wire are produced and read only by ``codec``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    field_validator,
    model_validator,
)

from services.common.chat import wants_stream

SCHEMA_VERSION = 1
SCORE_VERSION = 2
"""Scores are v2 since their error became an object (v1: text, still read)."""

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
"""An endpoint or model name: lowercase, digits, ``_.-``, 1..64 characters."""

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128)]

# Attributes of a replayed request (``rdv replay``): ``replay`` (the mark), ``replay_of``
# (the original request id) and, optionally, ``replay_model`` (only that model scores
# it). The rendezvous records a replay's decision but sends no reply.
REPLAY = "replay"
REPLAY_OF = "replay_of"
REPLAY_MODEL = "replay_model"


class Role(StrEnum):
    """What a model's answer is for."""

    CHAMPION = "champion"  # the default answer for its endpoint
    CHALLENGER = "challenger"  # may be picked instead of the champion
    CANARY = "canary"  # scored and compared, picked only by policy
    DETECTOR = "detector"  # scores the request itself (drift, abuse); never returned
    DECOY = "decoy"  # records traffic; never returned


class ScoreStatus(StrEnum):
    """How a model's attempt at a request ended."""

    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"  # the model chose not to score (e.g. past the deadline)


class _Frozen(BaseModel):
    """Immutable, tolerant of unknown fields, finite floats only (JSON has no NaN)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class BaseMessage(_Frozen):
    """Base of every top-level message; subclasses add a ``kind`` literal."""

    VERSIONS: ClassVar[frozenset[int]] = frozenset({SCHEMA_VERSION})
    """The schema versions of this kind that this build reads (it writes ``v``'s default)."""

    v: int = SCHEMA_VERSION


class ReturnAddress(_Frozen):
    """Where the reply to a request goes."""

    topic: str = Field(min_length=1)
    # None lets the producer's partitioner pick by key.
    partition: int | None = Field(default=None, ge=0)


def _check_deadline(deadline_epoch_ms: int, created_ms: int) -> None:
    if deadline_epoch_ms <= created_ms:
        raise ValueError(
            f"deadline_ms ({deadline_epoch_ms}) must be after created_ms ({created_ms})"
        )


class RequestEnvelope(BaseMessage):
    """One inference request, as the gateway puts it on the requests topic.

    ``deadline_epoch_ms`` keeps its v1 wire name ``deadline_ms`` (what Kafka-native
    clients write): code says the field name, the JSON the alias."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    kind: Literal["request"] = "request"
    request_id: RequestId
    endpoint: Name
    payload: JsonValue
    return_address: ReturnAddress
    # Absolute (epoch ms): the answer must be decided by then.
    deadline_epoch_ms: int = Field(alias="deadline_ms")
    created_ms: int
    trace_id: str
    # Free-form string tags, e.g. a sticky routing key or a replay mark.
    attributes: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _deadline_after_creation(self) -> Self:
        _check_deadline(self.deadline_epoch_ms, self.created_ms)
        return self

    def header(self) -> RequestHeader:
        """What a score repeats of this request (see ``RequestHeader``)."""
        return RequestHeader(
            return_address=self.return_address,
            deadline_epoch_ms=self.deadline_epoch_ms,
            created_ms=self.created_ms,
            trace_id=self.trace_id,
            attributes=self.attributes,
            stream=wants_stream(self.payload),
        )


class RequestHeader(_Frozen):
    """A request's envelope less its payload, repeated in each of its scores: a score
    whose request the rendezvous has not read yet opens the request's mailbox itself,
    so the rendezvous can read the requests topic in batches (one Kafka fetch for many
    requests) without waiting for it. ``stream``: the payload asked for a streamed
    answer; ``traceparent``: the request record's trace context, if it had one."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    return_address: ReturnAddress
    deadline_epoch_ms: int = Field(alias="deadline_ms")
    created_ms: int
    trace_id: str
    attributes: dict[str, str] = Field(default_factory=dict)
    stream: bool = False
    traceparent: str | None = None

    @model_validator(mode="after")
    def _deadline_after_creation(self) -> Self:
        # as RequestEnvelope's: a bad copy is refused when its score is read, never later
        _check_deadline(self.deadline_epoch_ms, self.created_ms)
        return self

    def envelope(self, request_id: str, endpoint: str) -> RequestEnvelope:
        """The request as far as the header tells it (no payload)."""
        return RequestEnvelope(
            request_id=request_id,
            endpoint=endpoint,
            payload=None,
            return_address=self.return_address,
            deadline_epoch_ms=self.deadline_epoch_ms,
            created_ms=self.created_ms,
            trace_id=self.trace_id,
            attributes=self.attributes,
        )


class Timings(_Frozen):
    """When a worker got, started and finished a request (epoch ms, sub-ms precision)."""

    received_ms: float
    started_ms: float
    finished_ms: float

    @model_validator(mode="after")
    def _in_order(self) -> Self:
        if not self.received_ms <= self.started_ms <= self.finished_ms:
            raise ValueError("timings must satisfy received_ms <= started_ms <= finished_ms")
        return self


class ErrorBody(_Frozen):
    """A machine-readable error: a stable code and a human message."""

    code: str
    message: str


MODEL_ERROR = "model_error"
"""The code of a score's error given as plain text, without a ``[code]`` prefix."""

_CODED = re.compile(r"\[([A-Za-z0-9_.:-]{1,64})\] ?(.*)", re.DOTALL)


def error_from_text(text: str) -> ErrorBody:
    """A score's error in the older text form: ``"[code] message"``, or plain text
    (code ``MODEL_ERROR``, the whole text as the message)."""
    coded = _CODED.fullmatch(text)
    if coded is None:
        return ErrorBody(code=MODEL_ERROR, message=text)
    return ErrorBody(code=coded[1], message=coded[2])


class Score(BaseMessage):
    """One model's answer (or failure) for one request, on the scores topic."""

    VERSIONS: ClassVar[frozenset[int]] = frozenset({1, SCORE_VERSION})

    v: int = SCORE_VERSION
    kind: Literal["score"] = "score"
    request_id: RequestId
    endpoint: Name
    model: Name
    model_version: str
    role: Role
    status: ScoreStatus
    output: JsonValue = None  # the model's answer; None unless status is ok
    # Why it failed: required for status error, absent for ok. Its code says whose fault
    # it was (services.common.errors.CLIENT_ERROR_CODES: the input's). Text is read too
    # (v1 scores of older or Kafka-native workers); a build that reads only v1 refuses
    # a v2 score as an unsupported version (a dead letter, never a misread error), so the
    # rendezvous and the archive are upgraded before the workers.
    error: ErrorBody | None = None
    timings: Timings
    request: RequestHeader | None = None  # None from workers that do not repeat it

    @field_validator("error", mode="before")
    @classmethod
    def _error_from_text(cls, value: object) -> object:
        """Wire compatibility: workers written before errors were typed send the error
        as text, ``"[code] message"`` or plain (see ``error_from_text``)."""
        if isinstance(value, str):
            if not value:
                raise ValueError("a score's error must be a non-empty error (or absent)")
            return error_from_text(value)
        return value

    @model_validator(mode="after")
    def _status_matches_error(self) -> Self:
        if self.status is ScoreStatus.ERROR and (self.error is None or not self.error.code):
            raise ValueError("a score with status 'error' needs a non-empty error")
        if self.status is ScoreStatus.OK and self.error is not None:
            raise ValueError("a score with status 'ok' must not carry an error")
        return self


OodStatus = Literal["flagged", "clear", "unknown"]


class OodCheck(_Frozen):
    """What an endpoint's OOD gate found for one request (see services.common.policy).

    ``unknown``: the detector failed, skipped, or did not report within the gate's wait.
    """

    status: OodStatus
    detector: str  # the detector model the gate listens to
    score: float | None = None  # the detector's ood_score, when it reported one


class Decision(BaseMessage):
    """What the rendezvous decided for one request, and why (the audit record)."""

    kind: Literal["decision"] = "decision"
    request_id: RequestId
    endpoint: Name
    chosen_model: str | None  # None when the default answer was given
    reason: str
    in_time: list[str]  # models whose score arrived before the decision
    late: list[str]  # models whose score arrived after it
    # Per model: score arrival minus request arrival at the rendezvous.
    latencies_ms: dict[str, float]
    elapsed_ms: float  # decision time minus request arrival
    decided_ms: float
    # Probability with which the returned model was picked (for off-policy evaluation).
    propensity: float = Field(default=1.0, gt=0.0, le=1.0)
    policy_version: int | None = None  # None when no policy entry was in force
    ood: OodCheck | None = None  # None when the endpoint's policy has no OOD gate
    # True when the client streamed the answer: one model was granted the stream up front.
    streamed: bool = False
    # A bandit stage's draw (None without one): the arm drawn, the context bucket and the
    # version of the learned rewards it was drawn from (services.common.bandit).
    arm: str | None = None
    bucket: str | None = None
    learned_version: int | None = None


class Reply(BaseMessage):
    """The answer sent to a request's return address."""

    kind: Literal["reply"] = "reply"
    request_id: RequestId
    model: str | None  # the model whose output this is; None for the default answer
    reason: str
    output: JsonValue = None
    error: ErrorBody | None = None
    decided_ms: float
    ood: OodCheck | None = None  # None when the endpoint's policy has no OOD gate

    @property
    def ok(self) -> bool:
        """True when the reply carries an answer rather than an error."""
        return self.error is None


class Delta(BaseMessage):
    """New text of a streaming request's answer, sent by the model generating it to the
    request's return address (chat requests with ``stream`` true). Best effort: the
    model's Score, and the Reply chosen from it, stay the source of truth."""

    kind: Literal["delta"] = "delta"
    request_id: RequestId
    model: Name
    seq: int = Field(ge=0)  # 0, 1, 2, ... per request and model run
    offset: int = Field(ge=0)  # where ``text`` starts in the model's answer (characters)
    text: str  # the answer's new text since the model's previous delta
    finish_reason: str | None = None  # set on the model's last delta (as in its output)


class StreamGrant(BaseMessage):
    """The rendezvous's choice of the one model whose deltas a streaming request's client
    sees; only that model's score can then answer it (sent to the return address)."""

    kind: Literal["grant"] = "grant"
    request_id: RequestId
    model: Name
    granted_ms: float
    ood: OodCheck | None = None  # what the OOD gate found; None without a gate


class ModelRegistration(BaseMessage):
    """Control entry: a model and where it serves (key ``model/<name>``)."""

    kind: Literal["model"] = "model"
    name: Name
    version: str
    role: Role
    endpoints: list[Name]
    runtime: str  # which worker runtime adapter loads it
    params: dict[str, JsonValue] = Field(default_factory=dict)  # runtime-specific settings
    # The share of requests it scores (services.common.sampling); 1 when older builds wrote it.
    sample: float = Field(default=1.0, gt=0.0, le=1.0)
    changed_by: str
    changed_ms: int


class PolicyEntry(BaseMessage):
    """Control entry: the rendezvous policy of one endpoint (key ``policy/<endpoint>``)."""

    kind: Literal["policy"] = "policy"
    endpoint: Name
    version: int = Field(ge=1)  # increases with every change of this endpoint's policy
    policy: dict[str, JsonValue]
    changed_by: str
    changed_ms: int
    # Why the change was made, when a check made it (e.g. ``rdv canary watch``'s rollback:
    # the metric, estimates, test statistic, n and alpha); None for a person's change.
    evidence: dict[str, JsonValue] | None = None


class DeadLetter(BaseMessage):
    """A record a service could not handle, kept with its origin for inspection and replay."""

    kind: Literal["dead_letter"] = "dead_letter"
    origin_topic: str
    origin_partition: int
    origin_offset: int
    error_code: str
    error: str
    service: str  # the service that gave up on it
    key: str | None  # the original key, decoded as UTF-8 with errors="replace"
    value_b64: str  # the original value bytes, base64; "" when the value was None
    failed_ms: int


class ArmRewards(_Frozen):
    """The rewards one arm earned in one context bucket: count, sum, sum of squares."""

    n: float = Field(ge=0)
    total: float
    squares: float = Field(ge=0)


class LearnedEntry(BaseMessage):
    """Control entry: an endpoint's rewards per context bucket and arm, as the learner
    last folded them from decisions and feedback (key ``learned/<endpoint>``)."""

    kind: Literal["learned"] = "learned"
    endpoint: Name
    version: int = Field(ge=1)  # increases with every entry the learner writes
    buckets: dict[str, dict[str, ArmRewards]]  # bucket -> arm -> rewards
    feedback: int = Field(ge=0)  # feedback records folded in
    learned_ms: int


ControlEntry: TypeAlias = ModelRegistration | PolicyEntry | LearnedEntry
"""What a compacted control topic holds."""


class Feedback(BaseMessage):
    """A client's judgement of an answer (``POST /v1/feedback``), for the archive."""

    kind: Literal["feedback"] = "feedback"
    request_id: RequestId
    reward: float = Field(ge=-1e6, le=1e6)  # e.g. 1 / 0 for thumbs up / down, or a score
    label: str | None = Field(default=None, max_length=64)  # e.g. "thumbs_up"
    received_ms: float  # when the gateway took it


Message: TypeAlias = (
    RequestEnvelope
    | Score
    | Decision
    | Reply
    | ModelRegistration
    | PolicyEntry
    | LearnedEntry
    | DeadLetter
    | Feedback
    | Delta
    | StreamGrant
)
"""Every top-level message kind."""

ReplyRecord: TypeAlias = Reply | Delta | StreamGrant
"""What a return address receives."""

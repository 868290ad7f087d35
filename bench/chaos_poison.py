"""Poison records for the chaos harness, built from the real message contract
(services/common/messages.py, encoded by codec) and then broken: every class of bad
input on every topic a service reads, each with the readers expected to dead-letter it
as docs/poison-records.md specifies.

A class is either *rejected* (every reader named in ``expect`` must dead-letter each
record of it; on the control topic, which every process re-reads from its start, each
process named in ``counted`` counts it in ``rdv_control_unusable_records_total``
instead) or *tolerated* (a valid record in an awkward place: no dead letter). No
process may exit on any of them, and no request may be decided twice. Every record
carries a key starting with ``poison-`` (or, for the null-key class, a value holding
such an id) so its dead letters can be told apart."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from services.common.codec import encode
from services.common.kafka import Outbound
from services.common.messages import (
    Decision,
    Feedback,
    PolicyEntry,
    Reply,
    RequestEnvelope,
    ReturnAddress,
    Role,
    Score,
    ScoreStatus,
    StreamGrant,
    Timings,
)
from services.common.topics import Topics

PREFIX = "poison-"
READERS: dict[str, tuple[str, ...]] = {
    "requests": ("rendezvous", "worker.fast", "worker.slow", "archive"),
    "scores": ("rendezvous", "archive"),
    "decisions": ("archive",),
    "feedback": ("archive",),
    "replies": ("gateway",),
    "control": ("gateway", "rendezvous"),
}
"""Topic role -> the services that read it (the ``service`` their dead letters carry).
The gateway reads only its own reply partition (0); control is read by a follower in
the gateway and in each rendezvous replica."""
GATEWAY_PARTITION = 0
UNUSED_REPLY_PARTITION = 1  # valid-looking requests are answered where nobody listens
HUGE_BYTES = 900_000  # under the clients' 1 MB message limit, over any sane payload
TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000


@dataclass(frozen=True)
class Poison:
    """One record to inject. ``expect``: readers that must dead-letter it (empty for a
    tolerated class). ``decided_once``: a request id that must be decided at most once."""

    cls: str
    role: str
    out: Outbound
    expect: tuple[str, ...]
    decided_once: str | None = None
    may: tuple[str, ...] = ()
    """Readers that may dead-letter it too (a payload near the size limit: an output
    too large for the broker dead-letters its source)."""
    counted: tuple[str, ...] = ()  # control readers that must count it as unusable


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(cls: str) -> str:
    return f"{PREFIX}{cls}-{uuid.uuid4().hex[:12]}"


# -- valid messages of each kind, to break ------------------------------------------


def request(rid: str, topics: Topics, **over: Any) -> RequestEnvelope:
    now = now_ms()
    fields: dict[str, Any] = {
        "request_id": rid,
        "endpoint": "demo",
        "payload": {"text": "poison"},
        "return_address": ReturnAddress(topic=topics.replies, partition=UNUSED_REPLY_PARTITION),
        "deadline_epoch_ms": now + 1000,
        "created_ms": now,
        "trace_id": rid,
    }
    return RequestEnvelope(**(fields | over))


def score(rid: str, model: str = "fast") -> Score:
    now = time.time() * 1000
    return Score(
        request_id=rid,
        endpoint="demo",
        model=model,
        model_version="1",
        role=Role.CHAMPION if model == "fast" else Role.CHALLENGER,
        status=ScoreStatus.OK,
        output={"text": "poison"},
        timings=Timings(received_ms=now, started_ms=now, finished_ms=now),
    )


def decision(rid: str) -> Decision:
    now = time.time() * 1000
    return Decision(
        request_id=rid,
        endpoint="demo",
        chosen_model="fast",
        reason="champion_in_time",
        in_time=["fast"],
        late=[],
        latencies_ms={"fast": 1.0},
        elapsed_ms=1.0,
        decided_ms=now,
    )


def feedback(rid: str) -> Feedback:
    return Feedback(request_id=rid, reward=1.0, received_ms=time.time() * 1000)


def reply(rid: str) -> Reply:
    return Reply(request_id=rid, model="fast", reason="champion_in_time", decided_ms=now_ms())


def policy_entry(rid: str) -> PolicyEntry:
    return PolicyEntry(
        endpoint=rid[:64],
        version=1,
        policy={"endpoint": rid[:64], "stages": "garbage"},
        changed_by="chaos",
        changed_ms=now_ms(),
    )


VALID: dict[str, Callable[[str, Topics], Any]] = {
    "requests": request,
    "scores": lambda rid, _t: score(rid),
    "decisions": lambda rid, _t: decision(rid),
    "feedback": lambda rid, _t: feedback(rid),
    "replies": lambda rid, _t: reply(rid),
    "control": lambda rid, _t: policy_entry(rid),
}
"""Topic role -> a message that topic's readers accept (for control, one of the right
kind and shape whose policy is garbage: never applied, and for an unserved endpoint)."""
WRONG_KIND: dict[str, Callable[[str, Topics], Any]] = {
    "requests": lambda rid, _t: score(rid),
    "scores": request,
    "decisions": lambda rid, _t: score(rid),
    "feedback": lambda rid, _t: decision(rid),
    "replies": lambda rid, _t: decision(rid),
    "control": lambda rid, _t: score(rid),
}
REQUIRED: dict[str, str] = {
    "requests": "return_address",
    "scores": "model",
    "decisions": "reason",
    "feedback": "reward",
    "replies": "decided_ms",
    "control": "policy",
}
"""Topic role -> a required field the missing-fields class removes."""


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _dict(msg: Any) -> dict[str, Any]:
    return dict(json.loads(encode(msg)))


# -- the classes ----------------------------------------------------------------------

GenericBuilder = Callable[[str, str, Topics], bytes | None]

GENERIC: dict[str, GenericBuilder] = {
    "not-json": lambda rid, _r, _t: b'{"v": 1, "kind": "request", "request_id": "' + rid.encode(),
    "not-utf8": lambda rid, _r, _t: b'{"v": 1, "kind": "\xff\xfe\xfa", "id": "' + rid.encode(),
    "empty": lambda _rid, _r, _t: b"",
    "null-value": lambda _rid, _r, _t: None,
    "json-not-object": lambda rid, _r, _t: _json([1, 2, rid]),
    "wrong-kind": lambda rid, role, t: encode(WRONG_KIND[role](rid, t)),
    "future-version": lambda rid, role, t: _json(_dict(VALID[role](rid, t)) | {"v": 99}),
    "missing-fields": lambda rid, role, t: _json(
        {k: v for k, v in _dict(VALID[role](rid, t)).items() if k != REQUIRED[role]}
    ),
}
"""Broken on every topic: rejected by every reader of it (except an empty or null
control value, which is a tombstone: valid)."""
TOMBSTONES = ("empty", "null-value")


def generic(role: str, topics: Topics) -> Iterator[Poison]:
    topic = topics.by_role[role]
    partition = GATEWAY_PARTITION if role == "replies" else None
    for cls, build in GENERIC.items():
        rid = new_id(cls)
        out = _out(topic, rid, build(rid, role, topics), partition)
        if role != "control":
            yield Poison(f"{role}/{cls}", role, out, READERS[role])
        else:
            counted = () if cls in TOMBSTONES else READERS[role]
            yield Poison(f"{role}/{cls}", role, out, (), counted=counted)


def _out(topic: str, key: str | None, value: bytes | None, partition: int | None) -> Outbound:
    return Outbound(
        topic,
        None if key is None else key.encode(),  # type: ignore[arg-type]
        value,  # type: ignore[arg-type]
        partition=partition,
    )


def _request_out(topics: Topics, req: RequestEnvelope | dict[str, Any], rid: str) -> Outbound:
    value = encode(req) if isinstance(req, RequestEnvelope) else _json(req)
    return _out(topics.requests, rid, value, None)


def specific(topics: Topics) -> Iterator[Poison]:
    """The classes that need one topic's meaning."""
    every = READERS["requests"]
    now = now_ms()

    def req(cls: str, expect: tuple[str, ...], may: tuple[str, ...] = (), **over: Any) -> Poison:
        rid = new_id(cls)
        msg = request(rid, topics, **over)
        out = _request_out(topics, msg, rid)
        return Poison(f"requests/{cls}", "requests", out, expect, rid, may)

    def raw_req(cls: str, change: dict[str, Any]) -> Poison:
        rid = new_id(cls)
        doc = _dict(request(rid, topics)) | change
        return Poison(f"requests/{cls}", "requests", _request_out(topics, doc, rid), every)

    yield req("unknown-endpoint", (), endpoint="nosuch-endpoint")
    yield req(
        "no-such-return-topic",
        ("rendezvous",),
        return_address=ReturnAddress(topic=topics.replies + ".no-such-topic", partition=0),
    )
    yield req(
        "no-such-return-partition",
        ("rendezvous",),
        return_address=ReturnAddress(topic=topics.replies, partition=99),
    )
    yield req("deadline-past", (), created_ms=now - 5000, deadline_epoch_ms=now - 4000)
    # held that long it would hold its partition's offsets: refused by the rendezvous
    yield req("deadline-far-future", ("rendezvous",), deadline_epoch_ms=now + TEN_YEARS_MS)
    yield req("huge-payload", (), every, payload={"text": "x" * HUGE_BYTES})
    yield raw_req("deadline-not-integer", {"deadline_ms": "soon"})
    yield raw_req("deadline-before-created", {"deadline_ms": now - 1, "created_ms": now})
    yield raw_req("bad-endpoint-name", {"endpoint": "Not A Name!"})
    yield raw_req("empty-request-id", {"request_id": ""})
    # a valid request with no key at all (its value names it)
    rid = new_id("null-key")
    yield Poison(
        "requests/null-key",
        "requests",
        _out(topics.requests, None, encode(request(rid, topics)), None),
        (),
        rid,
    )
    # the same request twice: decided once
    rid = new_id("duplicate-request")
    dup = _request_out(topics, request(rid, topics), rid)
    yield Poison("requests/duplicate-request", "requests", dup, (), rid)
    yield Poison("requests/duplicate-request", "requests", dup, (), rid)
    # scores first, then their request: decided once
    rid = new_id("score-before-request")
    early = _out(topics.scores, rid, encode(score(rid)), None)
    yield Poison("scores/score-before-request", "scores", early, (), rid)
    yield Poison(
        "scores/score-before-request",
        "requests",
        _request_out(topics, request(rid, topics), rid),
        (),
        rid,
    )
    rid = new_id("score-unknown-request")
    yield Poison(
        "scores/score-unknown-request",
        "scores",
        _out(topics.scores, rid, encode(score(rid, "slow")), None),
        (),
    )
    rid = new_id("score-bad-timings")
    doc = _dict(score(rid)) | {"timings": {"received_ms": 3, "started_ms": 2, "finished_ms": 1}}
    yield Poison(
        "scores/score-bad-timings",
        "scores",
        _out(topics.scores, rid, _json(doc), None),
        READERS["scores"],
    )
    rid = new_id("score-error-no-reason")
    doc = _dict(score(rid)) | {"status": "error", "output": None}
    yield Poison(
        "scores/score-error-no-reason",
        "scores",
        _out(topics.scores, rid, _json(doc), None),
        READERS["scores"],
    )
    # replies and stream grants for ids the gateway never asked about
    for cls, msg in (
        ("reply-unknown-id", reply),
        ("grant-unknown-id", lambda r: StreamGrant(request_id=r, model="fast", granted_ms=1.0)),
    ):
        rid = new_id(cls)
        yield Poison(
            f"replies/{cls}",
            "replies",
            _out(topics.replies, rid, encode(msg(rid)), GATEWAY_PARTITION),
            (),
        )
    rid = new_id("feedback-unknown-id")
    yield Poison(
        "feedback/feedback-unknown-id",
        "feedback",
        _out(topics.feedback, rid, encode(feedback(rid)), None),
        (),
    )
    # control: an entry of no known kind, and a policy the rendezvous refuses
    rid = new_id("control-unknown-kind")
    yield Poison(
        "control/unknown-kind",
        "control",
        _out(topics.control, rid, _json({"v": 1, "kind": "endpoint", "name": rid}), None),
        (),
        counted=READERS["control"],
    )
    rid = new_id("control-bad-policy")
    yield Poison(
        "control/bad-policy",
        "control",
        _out(topics.control, f"policy/{rid}", encode(policy_entry(rid)), None),
        (),
        counted=READERS["control"],
    )


def build_all(topics: Topics, repeats: int = 1) -> list[Poison]:
    """Every class on every topic a service reads, ``repeats`` times (fresh ids)."""
    out: list[Poison] = []
    for _ in range(repeats):
        for role in READERS:
            out.extend(generic(role, topics))
        out.extend(specific(topics))
    return out


def classes(poisons: list[Poison]) -> list[str]:
    return sorted({p.cls for p in poisons})


def poison_id(key: bytes | None, value: bytes | None) -> str | None:
    """The poison id a record (or its dead letter's key/value) carries, if any."""
    if key is not None:
        text = key.decode("utf-8", errors="replace").removeprefix("policy/")
        if text.startswith(PREFIX):
            return text
    if value and PREFIX.encode() in value:
        start = value.index(PREFIX.encode())
        end = start + len(PREFIX)
        while end < len(value) and (value[end : end + 1].isalnum() or value[end : end + 1] == b"-"):
            end += 1
        return value[start:end].decode("ascii", errors="replace")
    return None

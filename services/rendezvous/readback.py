"""Exactly one answer after a restart: what a newly owned partition's uncommitted
requests already got, read back from the topics, and a filter that writes only what
is missing.

A request's offset is committed only after its reply and decision were acknowledged,
so every request that may have been answered is at or after its partition's committed
offset. On assignment the rendezvous reads those requests, then the decisions and the
replies written since the oldest of them (less ``margin_ms`` for clock skew), however
long ago that was. Each re-read request is then:

- answered already (a decision, and a reply or none due): marked decided, never
  answered again;
- replied but its decision lost (a crash between the two writes): decided again, the
  reply dropped, the decision written with the reply's model, reason and time;
- decided but its reply lost: decided again, the decision dropped, the reply sent;
- neither: answered as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from services.common.clock import mono_ms
from services.common.codec import decode, decode_reply_record, encode
from services.common.errors import MessageError
from services.common.kafka import Outbound, Reader, Record
from services.common.loop import Context, Inbound, Processor
from services.common.messages import REPLAY, Decision, Reply, RequestEnvelope

log = logging.getLogger("rdv.rendezvous")

Address = tuple[str, int | None]
BEGINNING = -2  # read_from: the partition's first record


@dataclass
class Plan:
    """What the re-read requests of newly owned partitions still need."""

    decided: set[str] = field(default_factory=set)
    """Answered already: mark decided (includes decided ids of any request read back)."""
    decision_only: dict[str, Reply] = field(default_factory=dict)
    """Replied, decision lost: write the decision (from this reply) only."""
    reply_only: set[str] = field(default_factory=set)
    """Decided, reply lost: send the reply only."""


def plan(
    requests: Iterable[RequestEnvelope],
    decided: set[str],
    replies: dict[str, Reply],
    reachable: set[Address],
) -> Plan:
    """Pure: sort the re-read requests by what they already got. A reply is due unless
    the request is a replay or its return address does not exist (it was dead-lettered)."""
    out = Plan(decided=set(decided))
    for req in requests:
        rid, ret = req.request_id, req.return_address
        due = REPLAY not in req.attributes and (ret.topic, ret.partition) in reachable
        if rid in decided:
            if due and rid not in replies:
                out.reply_only.add(rid)
                out.decided.discard(rid)
        elif rid in replies:
            out.decision_only[rid] = replies[rid]
    return out


class ExactlyOnce:
    """A Processor around the rendezvous that drops the outputs a plan says were
    written already, and records the decisions of replies sent before a crash.

    It also holds back deadline decisions after the process was frozen (SIGSTOP, a
    stalled host) for longer than ``stall_ms`` (the group session): the group has
    then given its partitions to another replica, which answers their requests, but
    this process learns it only from its next heartbeat. For ``stall_ms`` after such a
    gap ``tick`` does nothing, so the revocation arrives (and drops those mailboxes)
    before any of them is decided a second time.

    Records handed to ``process`` in that window (fetched before the freeze, or after
    it while the group was expelling this member) are not handled either: a score
    among them would complete a mailbox the other replica answers. They are held
    (their offsets stay uncommitted) and handled when the window ends; ``revoked``
    drops those of partitions gone elsewhere, whose new owner reads them again."""

    def __init__(
        self,
        inner: Processor,
        decisions_topic: str,
        dead_letter_topic: str,
        *,
        stall_ms: float | None = None,
        clock: Callable[[], float] = mono_ms,
    ) -> None:
        self.inner = inner
        self._decisions = decisions_topic
        self._dead_letters = dead_letter_topic
        self.decision_only: dict[str, Reply] = {}
        self.reply_only: set[str] = set()
        self._stall_ms = stall_ms
        self._clock = clock
        self._last: float | None = None
        self._quiet_until = 0.0
        self._deferred: list[Inbound] = []

    def _awake(self) -> bool:
        """False while deadline decisions wait after a freeze longer than stall_ms."""
        now = self._clock()
        gap = 0.0 if self._last is None else now - self._last
        if self._stall_ms is not None and gap > self._stall_ms:
            self._quiet_until = now + self._stall_ms
            log.warning(
                "the loop was frozen longer than the group session: deadline decisions "
                "wait for the group to say which partitions are still ours",
                extra={"frozen_ms": round(gap), "wait_ms": self._stall_ms},
            )
        self._last = now
        return now >= self._quiet_until

    def expect(self, todo: Plan) -> None:
        self.decision_only.update(todo.decision_only)
        self.reply_only.update(todo.reply_only)

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        if not self._awake():
            for item in batch:
                ctx.hold(item.record)  # released when handled, or forgotten on revoke
            self._deferred.extend(batch)
            return
        self._handle(self._take_deferred(ctx) + list(batch), ctx)

    def until_due_s(self) -> float | None:
        """Seconds until ``tick`` has work: the end of a wait after a freeze, else the
        rendezvous's next timer (None: none)."""
        quiet = (self._quiet_until - self._clock()) / 1000.0
        if quiet > 0:
            return quiet
        if self._deferred:
            return 0.0
        inner = getattr(self.inner, "until_due_s", None)
        return None if inner is None else inner()

    def tick(self, now_ms: float, ctx: Context) -> None:
        if not self._awake():
            return
        if self._deferred:
            self._handle(self._take_deferred(ctx), ctx)
        self.inner.tick(now_ms, ctx)
        self._filter(ctx)

    def revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        """Forget the deferred records of partitions gone elsewhere (the runner forgot
        their tickets; their new owner reads them), then tell the rendezvous."""
        self._deferred = [
            i for i in self._deferred if (i.record.topic, i.record.partition) not in partitions
        ]
        revoked = getattr(self.inner, "revoked", None)
        if revoked is not None:
            revoked(partitions)

    def _take_deferred(self, ctx: Context) -> list[Inbound]:
        deferred, self._deferred = self._deferred, []
        for item in deferred:
            ctx.release(item.record)
        return deferred

    def _handle(self, batch: list[Inbound], ctx: Context) -> None:
        if batch:
            self.inner.process(batch, ctx)
        self._filter(ctx)

    def _filter(self, ctx: Context) -> None:
        if not (self.decision_only or self.reply_only):
            return
        kept: list[tuple[Outbound, Sequence[Record]]] = []
        for out, sources in ctx.emits:
            rid = out.key.decode("utf-8", "replace")
            if out.topic == self._dead_letters:
                kept.append((out, sources))
            elif out.topic == self._decisions and rid in self.reply_only:
                self.reply_only.discard(rid)  # the reply before it in this list goes out
            elif out.topic == self._decisions and rid in self.decision_only:
                kept.append((_as_replied(out, self.decision_only.pop(rid)), sources))
            elif out.topic != self._decisions and rid in self.decision_only:
                continue  # the client has its reply; the decision follows in this list
            else:
                kept.append((out, sources))
        ctx.emits[:] = kept


def _as_replied(out: Outbound, reply: Reply) -> Outbound:
    """The decision ``out`` with the model, reason and time of the reply already sent."""
    decision = decode(out.value, Decision).model_copy(
        update={
            "chosen_model": reply.model,
            "reason": reply.reason,
            "decided_ms": reply.decided_ms,
            "ood": reply.ood,
        }
    )
    return Outbound(out.topic, out.key, encode(decision), out.headers, out.partition)


@dataclass(frozen=True)
class Sources:
    """Where read_back reads: the rendezvous group's consumer config (whose committed
    offsets count; the group is not joined) and the topic names."""

    group: dict[str, str]
    requests: str
    decisions: str


def read_back(
    src: Sources, parts: Sequence[int], from_start: bool, margin_ms: int, timeout_s: float = 10
) -> Plan:
    """Read what the uncommitted requests of ``parts`` already got (see the module doc),
    on one connection. A partition the group never committed is read from its start
    when ``from_start`` (the group's auto.offset.reset is earliest), else not at all
    (reading starts at its end: nothing there is read again)."""
    with Reader(src.group, timeout_s) as reader:
        starts = reader.committed(src.requests, parts)
        if from_start:
            starts = {p: starts.get(p, BEGINNING) for p in parts}
        pending = _decoded(reader.read_from(src.requests, starts), RequestEnvelope)
        stamps = (min(rec.timestamp_ms, req.created_ms) for rec, req in pending)
        oldest = min(stamps, default=None)
        if oldest is None:
            return Plan()  # nothing uncommitted: nothing can be answered twice
        since = oldest - margin_ms
        decisions = _decoded(reader.read_since(src.decisions, parts, since), Decision)
        decided = {d.request_id for _, d in decisions}
        requests = [req for _, req in pending]
        counts = reader.partitions()
        reachable = _reachable(requests, counts)
        replies = _replies(reader, reachable, counts, since)
    todo = plan(requests, decided, replies, reachable)
    log.info(
        "read back",
        extra={
            "partitions": list(parts),
            "uncommitted_requests": len(requests),
            "decisions": len(decided),
            "replies": len(replies),
            "decision_only": len(todo.decision_only),
            "reply_only": len(todo.reply_only),
        },
    )
    return todo


def _reachable(requests: Iterable[RequestEnvelope], partitions: dict[str, int]) -> set[Address]:
    out: set[Address] = set()
    for req in requests:
        ret = req.return_address
        count = partitions.get(ret.topic, 0)
        if count and (ret.partition is None or ret.partition < count):
            out.add((ret.topic, ret.partition))
    return out


def _replies(
    reader: Reader, addresses: set[Address], partitions: dict[str, int], since_ms: int
) -> dict[str, Reply]:
    """Request id -> the reply found at these return addresses since ``since_ms``."""
    by_topic: dict[str, set[int]] = {}
    for topic, part in addresses:  # no partition: the partitioner chose, read them all
        wanted = range(partitions[topic]) if part is None else (part,)
        by_topic.setdefault(topic, set()).update(wanted)
    out: dict[str, Reply] = {}
    for topic, parts in by_topic.items():
        for rec in reader.read_since(topic, sorted(parts), since_ms):
            try:
                msg = decode_reply_record(rec.value)
            except MessageError:
                continue  # not a record the rendezvous wrote
            if isinstance(msg, Reply):
                out[msg.request_id] = msg
    return out


M = TypeVar("M", RequestEnvelope, Decision)


def _decoded(records: Iterable[Record], kind: type[M]) -> list[tuple[Record, M]]:
    out: list[tuple[Record, M]] = []
    for rec in records:
        try:
            out.append((rec, decode(rec.value, kind)))
        except MessageError:
            continue  # dead-lettered by the loop when it reads it
    return out

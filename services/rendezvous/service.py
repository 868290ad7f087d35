"""The rendezvous processor: requests open mailboxes, scores fill them, the policy
decides, and each request gets exactly one reply and one decision.

Offsets: every request and score record placed in a mailbox is held (uncommitted)
until its mailbox closes and the reply and decision it caused are acknowledged. After
a restart the open requests are therefore read again and their mailboxes rebuilt;
requests already answered are recognised from the decisions topic (read back on every
partition assignment), so nothing is answered twice.

Bad input (the loop's per-record contract, services/common/loop.py): each record is
handled in its own ``ctx.isolate`` block and the store is changed only after every
check passed, so a record that fails leaves the store as if it had not been seen and
goes alone to dead letters. Deciding never raises (a policy that fails answers with an
``internal_error`` default), so a mailbox that was changed is always answered. What
happens to records that are valid but unusable:

- a request whose deadline is beyond the store's horizon: dead-lettered (TOO_FAR);
- a request whose return address cannot take the reply (no such topic or partition):
  the decision is logged, the request record is dead-lettered by the loop;
- a request for an endpoint without a policy: answered with an ``unknown_endpoint``
  error (the client learns why); no dead letter;
- a duplicate request: kept with its open mailbox (answered once) or, once decided,
  released; no dead letter. A score that carries a copy of its request
  (``Score.request``) opens the request's mailbox before the request record is read
  (the requests topic is read in batches); that record, read later, is checked off the
  same way, without counting as a duplicate. Scores without a copy for a request never
  seen wait as orphans, then expire (``orphan_ttl_ms``); duplicate and late scores are
  released; no dead letter.
- while the store's byte budget is spent: a new request is answered ``overloaded``;
  a score for an open request is shed (released, counted).

A streaming request's grant (decide.stream_grant) goes to its return address as a
``StreamGrant`` as soon as it is made, best effort (a client that misses it gets the
whole answer with the reply). Grants live in the mailbox only: after a restart the
rebuilt mailbox is granted again, by the same rule, on the scores read back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from services.common import tracing
from services.common.arrivals import Grant
from services.common.bandit import NOTHING_LEARNED, Learned
from services.common.clock import mono_ms, wall_ms
from services.common.codec import encode, message_key
from services.common.decide import (
    NO_POLICY,
    OVERLOADED,
    Verdict,
    decide,
    error_verdict,
    in_time_and_late,
    next_check,
    stream_grant,
    verdict_latencies,
)
from services.common.errors import MessageError
from services.common.kafka import Outbound, Record
from services.common.loop import Context, Inbound
from services.common.messages import (
    REPLAY,
    Decision,
    ErrorBody,
    Reply,
    RequestEnvelope,
    Score,
    StreamGrant,
)
from services.common.policy import Policy
from services.common.topics import Topics
from services.rendezvous import metrics
from services.rendezvous.mailbox import Handled, Mailbox, MailboxStore, Outcome

log = logging.getLogger("rdv.rendezvous")


class Rendezvous:
    """A services.common.loop Processor over the requests and scores topics."""

    def __init__(
        self,
        *,
        policies: dict[str, Policy],
        topics: Topics,
        store: MailboxStore,
        clock: Callable[[], float] = mono_ms,
        wall: Callable[[], float] = wall_ms,
    ) -> None:
        self.policies = policies
        self.learned: dict[str, Learned] = {}  # endpoint -> the learner's latest rewards
        self.topics = topics
        self.store = store
        self._clock = clock
        self._wall = wall
        self._synced = metrics.CounterSync()

    # -- the loop's hooks -------------------------------------------------------------

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        now, wall = self._clock(), self._wall()
        for item in batch:
            with ctx.isolate(item.record):
                ctx.hold(item.record)  # every record handed to the store is held until released
                if item.record.topic == self.topics.requests:
                    self._on_request(item.message, item.record, ctx, now, wall)
                else:
                    self._on_score(item.message, item.record, ctx, now, wall)

    def until_due_s(self) -> float | None:
        """Seconds until an open mailbox must be decided; None while none is open."""
        due = self.store.next_due_ms()
        return None if due is None else max(0.0, (due - self._clock()) / 1000.0)

    def tick(self, now_ms: float, ctx: Context) -> None:
        now = self._clock()
        for mailbox in self.store.due(now):
            with ctx.isolate(None):
                self._evaluate(mailbox, ctx, now)
        for ref in self.store.expire(now):
            ctx.release(_rec(ref))
        metrics.OPEN.set(len(self.store))
        metrics.HELD_BYTES.labels("open").set(self.store.open_bytes)
        metrics.HELD_BYTES.labels("orphans").set(self.store.orphan_bytes)
        self._synced.update(self.store.counters)

    def revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        """These partitions went elsewhere: drop their open mailboxes undecided (their
        offsets were not committed, so the new owner reads and answers them)."""
        gone = {p for t, p in partitions if t == self.topics.requests}
        for mailbox in self.store.mailboxes():
            refs = [r for r in mailbox.refs if isinstance(r, Record)]
            if any(r.topic == self.topics.requests and r.partition in gone for r in refs):
                self.store.drop(mailbox.request_id)  # the runner forgot their tickets

    def mark_decided(self, request_ids: Sequence[str]) -> None:
        """Requests answered before (by this or another instance): never answer again."""
        now = self._clock()
        for rid in request_ids:
            self.store.mark_decided(rid, now)  # refs of stale mailboxes: partitions gone

    # -- arrivals ---------------------------------------------------------------------

    def _on_request(
        self, req: RequestEnvelope, rec: Record, ctx: Context, now: float, wall: float
    ) -> None:
        handled = self.store.open(req, rec, now, wall, _size(rec))
        if handled.outcome is Outcome.TOO_FAR:  # nothing was stored: fail the record alone
            raise MessageError(
                f"deadline_ms {req.deadline_epoch_ms} is more than "
                f"{self.store.limits.max_deadline_ms:.0f} ms ahead; not accepted"
            )
        self._opened(req, handled, ctx, now)

    def _open_from(self, score: Score, ctx: Context, now: float, wall: float) -> None:
        """Open the mailbox of a score's request from the score's copy of it, before the
        request record is read (the requests topic is read in batches). A deadline too
        far ahead leaves the score an orphan: the request record, once read, is refused
        with the reason."""
        if score.request is None:
            return
        req = score.request.envelope(score.request_id, score.endpoint)
        handled = self.store.open(
            req,
            None,
            now,
            wall,
            streams=score.request.stream,
            traceparent=score.request.traceparent,
        )
        if handled.outcome is not Outcome.TOO_FAR:
            self._opened(req, handled, ctx, now)

    def _opened(self, req: RequestEnvelope, handled: Handled, ctx: Context, now: float) -> None:
        if handled.outcome is Outcome.FULL:
            verdict = error_verdict(
                OVERLOADED, "overloaded", "the rendezvous has too many open requests or bytes"
            )
            self._answer(req, verdict, [_rec(r) for r in handled.release], ctx, now=now, box=None)
            return
        for ref in handled.release:
            ctx.release(_rec(ref))
        if handled.mailbox is not None and handled.outcome is Outcome.OPENED:
            self._evaluate(handled.mailbox, ctx, now)

    def _on_score(self, score: Score, rec: Record, ctx: Context, now: float, wall: float) -> None:
        handled = self.store.add_score(score, rec, now, _size(rec))
        for ref in handled.release:
            ctx.release(_rec(ref))
        if handled.outcome is Outcome.LATE:
            metrics.LATE.labels(score.endpoint, score.model).inc()
        if handled.mailbox is not None and handled.outcome is Outcome.FILLED:
            self._evaluate(handled.mailbox, ctx, now)
        elif handled.outcome is Outcome.ORPHANED and rec not in handled.release:
            self._open_from(score, ctx, now, wall)

    # -- deciding ---------------------------------------------------------------------

    def _evaluate(self, mailbox: Mailbox, ctx: Context, now: float) -> None:
        policy = self.policies.get(mailbox.request.endpoint)
        if policy is None:
            verdict: Verdict | None = error_verdict(
                NO_POLICY,
                "unknown_endpoint",
                f"no policy for endpoint {mailbox.request.endpoint!r}",
            )
        else:
            try:  # never raise past a changed store: a failing policy still answers
                if mailbox.learned is None:  # one request, one state: its draw cannot change
                    mailbox.learned = self.learned.get(policy.endpoint, NOTHING_LEARNED)
                learned = mailbox.learned
                if (grant := stream_grant(mailbox, policy, now, learned)) is not None:
                    mailbox.grant = grant
                    self._send_grant(mailbox.request, grant, ctx)
                verdict = decide(mailbox, policy, now, learned)
                if verdict is None:
                    self.store.schedule(mailbox, next_check(mailbox, policy, now))
                    return
            except Exception as exc:  # the request gets a clear default
                log.exception("policy failed", extra={"request_id": mailbox.request_id})
                policy = None  # not asked again for the decision's details
                verdict = error_verdict(
                    POLICY_FAILED, "internal_error", f"the policy failed: {type(exc).__name__}"
                )
        if verdict is None:
            return
        closed = self.store.close(mailbox.request_id, now)
        self._answer(
            closed.request,
            verdict,
            [_rec(r) for r in closed.refs],
            ctx,
            now=now,
            box=(closed, policy),
        )

    def _send_grant(self, req: RequestEnvelope, grant: Grant, ctx: Context) -> None:
        msg = StreamGrant(
            request_id=req.request_id, model=grant.model, granted_ms=self._wall(), ood=grant.ood
        )
        ret = req.return_address
        ctx.emit_best_effort(
            Outbound(ret.topic, message_key(msg), encode(msg), partition=ret.partition)
        )
        metrics.GRANTS.labels(req.endpoint, grant.model).inc()

    def _answer(
        self,
        req: RequestEnvelope,
        verdict: Verdict,
        refs: list[Record],
        ctx: Context,
        *,
        now: float,
        box: tuple[Mailbox, Policy | None] | None,
    ) -> None:
        wall = self._wall()
        reply = Reply(
            request_id=req.request_id,
            model=verdict.chosen_model,
            reason=verdict.reason,
            output=verdict.output,
            error=verdict.error,
            decided_ms=wall,
            ood=verdict.ood,
        )
        in_time: list[str] = []
        late: list[str] = []
        latencies: dict[str, float] = {}
        elapsed = 0.0
        if box is not None:
            mailbox, policy = box
            elapsed = now - mailbox.arrived_ms
            latencies = verdict_latencies(mailbox)
            if policy is not None:
                in_time, late = in_time_and_late(mailbox, policy, now)
        decision = Decision(
            request_id=req.request_id,
            endpoint=req.endpoint,
            chosen_model=verdict.chosen_model,
            reason=verdict.reason,
            in_time=in_time,
            late=late,
            latencies_ms=latencies,
            elapsed_ms=max(elapsed, 0.0),
            decided_ms=wall,
            propensity=verdict.propensity,
            policy_version=box[1].version if box is not None and box[1] else None,
            ood=verdict.ood,
            streamed=box is not None and box[0].grant is not None,
            arm=None if verdict.draw is None else verdict.draw.arm,
            bucket=None if verdict.draw is None else verdict.draw.bucket,
            learned_version=None if verdict.draw is None else verdict.draw.learned_version,
        )
        # the reply and the decision carry the decision span's context
        trace = (
            tracing.decision_span(
                decision,
                reply.error,
                refs,
                self.topics.requests,
                None if box is None else box[0].traceparent,
            )
            if tracing.enabled()
            else ()
        )
        ret = req.return_address
        if REPLAY not in req.attributes:  # a replay answers no client: decision only
            ctx.emit(
                Outbound(
                    ret.topic, message_key(reply), encode(reply), trace, partition=ret.partition
                ),
                source=refs,
            )
        ctx.emit(
            Outbound(self.topics.decisions, message_key(decision), encode(decision), trace),
            source=refs,
        )
        for rec in refs:
            ctx.release(rec)
        metrics.DECISIONS.labels(req.endpoint, verdict.chosen_model or "-", verdict.reason).inc()
        metrics.ELAPSED.labels(req.endpoint).observe(max(elapsed, 0.0) / 1000.0)
        if verdict.ood is not None:
            metrics.OOD.labels(req.endpoint, verdict.ood.status).inc()
        if verdict.error is not None:
            _log_default(req, verdict.error)


POLICY_FAILED = "policy_failed"
"""A verdict's reason when deciding raised (a bug): the request still gets an answer."""


def _size(rec: Record) -> int:
    """A record's bytes as the store counts them."""
    return len(rec.key or b"") + len(rec.value or b"")


def _rec(ref: object) -> Record:
    assert isinstance(ref, Record), "the store hands back the records it was given"
    return ref


def _log_default(req: RequestEnvelope, error: ErrorBody) -> None:
    log.debug(
        "default answer",
        extra={"request_id": req.request_id, "endpoint": req.endpoint, "code": error.code},
    )

"""The read-back plan and the output filter (pure; the broker side is in
tests/integration/test_exactly_once.py)."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.codec import decode, encode, message_key
from services.common.kafka import Outbound, Record
from services.common.loop import Context, Inbound
from services.common.messages import REPLAY, Decision, Reply, ReturnAddress
from services.rendezvous.readback import ExactlyOnce, Plan, plan
from tests.factories import request

REPLIES = "rdv.replies"


def reply(rid: str, model: str = "champ", reason: str = "champion_in_time") -> Reply:
    return Reply(request_id=rid, model=model, reason=reason, output="x", decided_ms=123.0)


def decision(rid: str, model: str = "backup", reason: str = "fallback:1") -> Decision:
    return Decision(
        request_id=rid,
        endpoint="demo",
        chosen_model=model,
        reason=reason,
        in_time=[model],
        late=[],
        latencies_ms={model: 5.0},
        elapsed_ms=5.0,
        decided_ms=999.0,
    )


def test_plan_sorts_requests_by_what_they_already_got() -> None:
    done, torn_d, torn_r, fresh, replay, lost_addr = (
        request(request_id=n, reply_topic=REPLIES)
        for n in ("done", "torn_d", "torn_r", "fresh", "replay", "lost_addr")
    )
    replay = replay.model_copy(update={"attributes": {REPLAY: "1"}})
    lost_addr = lost_addr.model_copy(
        update={"return_address": ReturnAddress(topic="no.such.topic", partition=0)}
    )
    got = plan(
        [done, torn_d, torn_r, fresh, replay, lost_addr],
        decided={"done", "torn_r", "replay", "lost_addr", "older"},
        replies={"done": reply("done"), "torn_d": reply("torn_d")},
        reachable={(REPLIES, None)},
    )
    assert got.decided == {"done", "replay", "lost_addr", "older"}  # no reply due: done
    assert set(got.decision_only) == {"torn_d"}  # replied, decision lost
    assert got.reply_only == {"torn_r"}  # decided, reply lost


class Answers:
    """A processor that answers each request with a reply and a decision."""

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for item in batch:
            rid = item.message
            ctx.emit(Outbound(REPLIES, rid.encode(), encode(reply(rid, "backup"))), item.record)
            d = decision(rid)
            ctx.emit(Outbound("rdv.decisions", message_key(d), encode(d)), item.record)

    def tick(self, now_ms: float, ctx: Context) -> None:
        pass


def test_the_filter_writes_only_what_is_missing() -> None:
    once = ExactlyOnce(Answers(), "rdv.decisions", "rdv.dead-letters")
    once.expect(Plan(decision_only={"a": reply("a")}, reply_only={"b"}))
    batch = [
        Inbound(Record("rdv.requests", 0, i, rid.encode(), b""), rid)
        for i, rid in enumerate(("a", "b", "c"))
    ]
    ctx = Context()
    once.process(batch, ctx)
    sent = [(out.topic, out.key.decode()) for out, _ in ctx.emits]
    assert sent == [
        ("rdv.decisions", "a"),  # a's reply went out before the crash
        (REPLIES, "b"),  # b's decision did
        (REPLIES, "c"),
        ("rdv.decisions", "c"),
    ]
    logged = decode(ctx.emits[0][0].value, Decision)
    assert (logged.chosen_model, logged.reason, logged.decided_ms) == (
        "champ",
        "champion_in_time",
        123.0,
    )  # the decision says what the client got
    assert all(src for _, src in ctx.emits)  # offsets still wait for every output kept
    assert not once.decision_only  # each applies once
    assert not once.reply_only

    again = Context()
    once.process(batch[:1], again)
    assert [(o.topic, o.key.decode()) for o, _ in again.emits] == [
        (REPLIES, "a"),
        ("rdv.decisions", "a"),
    ]


class DecidesOnTick:
    """A processor whose tick answers one due request each call."""

    def __init__(self) -> None:
        self.ticks = 0

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        pass

    def tick(self, now_ms: float, ctx: Context) -> None:
        self.ticks += 1
        ctx.emit(Outbound(REPLIES, b"due", encode(reply("due"))))


def test_after_a_freeze_longer_than_the_session_deadline_decisions_wait() -> None:
    """A replica frozen (SIGSTOP) past its session lost its partitions to another
    replica; deciding its due mailboxes at once on waking would answer them twice."""
    now = [0.0]
    inner = DecidesOnTick()
    once = ExactlyOnce(
        inner, "rdv.decisions", "rdv.dead-letters", stall_ms=1500, clock=lambda: now[0]
    )

    def tick_at(t: float) -> int:
        now[0] = t
        ctx = Context()
        once.tick(t, ctx)
        return len(ctx.emits)

    assert tick_at(0) == 1
    assert tick_at(1000) == 1  # a short gap: business as usual
    assert once.until_due_s() is None  # the inner processor has no timer hook
    assert tick_at(11_000) == 0  # woke after 10 s: wait for the group's verdict
    assert once.until_due_s() == 1.5  # the loop sleeps through the wait, not spins
    assert tick_at(12_000) == 0
    assert once.until_due_s() == 0.5
    assert tick_at(12_600) == 1  # one session later: the revocation had its chance
    assert inner.ticks == 3
    inner.until_due_s = lambda: 0.04  # type: ignore[attr-defined]
    assert once.until_due_s() == 0.04  # awake: the rendezvous's own next timer


class AnswersEachRecord:
    """A processor that answers each record at once (a score completing a mailbox)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.revoked_parts: list[frozenset[tuple[str, int]]] = []

    def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
        for item in batch:
            self.seen.append((item.record.partition, item.record.offset))
            ctx.emit(Outbound(REPLIES, b"r", encode(reply(str(item.message)))), item.record)

    def tick(self, now_ms: float, ctx: Context) -> None:
        pass

    def revoked(self, partitions: frozenset[tuple[str, int]]) -> None:
        self.revoked_parts.append(partitions)


def test_records_handed_over_after_a_freeze_wait_for_the_group() -> None:
    """Records fetched before a freeze (or while the group expels the frozen member)
    must not complete a mailbox on waking: another replica answers those requests.
    They are held, dropped if their partition was revoked, handled after the window."""
    now = [0.0]
    inner = AnswersEachRecord()
    once = ExactlyOnce(
        inner, "rdv.decisions", "rdv.dead-letters", stall_ms=1500, clock=lambda: now[0]
    )

    def score(part: int, off: int) -> Inbound:
        return Inbound(Record("rdv.scores", part, off, b"k", b""), f"s{part}-{off}")

    def process_at(t: float, batch: list[Inbound]) -> Context:
        now[0] = t
        ctx = Context()
        once.process(batch, ctx)
        return ctx

    assert len(process_at(0, [score(0, 1)]).emits) == 1  # awake: answered at once
    woke = process_at(10_000, [score(0, 2), score(1, 7)])  # the first batch on waking
    assert woke.emits == []
    assert inner.seen == [(0, 1)]
    assert [r.offset for r in woke.holds] == [2, 7]  # offsets kept uncommitted
    assert process_at(10_500, [score(1, 8)]).emits == []  # still waiting
    once.revoked(frozenset({("rdv.scores", 0)}))  # the group's verdict: partition 0 gone
    assert inner.revoked_parts == [frozenset({("rdv.scores", 0)})]
    now[0] = 11_600
    ctx = Context()
    once.tick(11_600, ctx)  # the window is over: what is still ours is handled
    assert inner.seen == [(0, 1), (1, 7), (1, 8)]
    assert len(ctx.emits) == 2
    assert sorted(r.offset for r in ctx.releases) == [7, 8]
    assert len(process_at(11_700, [score(1, 9)]).emits) == 1  # business as usual

"""MailboxStore: first score wins, late and orphan scores, bounds, scheduling, and
every ref handed back exactly once."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.common.arrivals import RequestView
from services.common.messages import ErrorBody, RequestEnvelope, Role, Score, ScoreStatus
from services.rendezvous.mailbox import Handled, Mailbox, MailboxStore, Outcome, StoreLimits
from tests.factories import request, score_for

NOW = 50_000.0  # monotonic ms


def _req(rid: str, deadline_in_ms: int = 1000) -> RequestEnvelope:
    return request(request_id=rid, deadline_in_ms=deadline_in_ms)


def _open(store: MailboxStore, req: RequestEnvelope, ref: object, now: float = NOW) -> Handled:
    """Open with the wall clock at the request's creation: deadline = now + deadline_in_ms."""
    return store.open(req, ref, now, float(req.created_ms))


def _score(req: RequestEnvelope, model: str, output: object = None, **kw: object) -> Score:
    return score_for(req, model=model, output=output, **kw)  # type: ignore[arg-type]


def test_open_starts_the_clock_and_schedules_the_deadline() -> None:
    store = MailboxStore()
    req = _req("r1", deadline_in_ms=800)
    got = store.open(req, "ref-req", NOW, float(req.created_ms) + 100)  # 100 ms in transit
    assert got.outcome is Outcome.OPENED
    assert got.release == ()
    box = got.mailbox
    assert box is not None
    assert (box.arrived_ms, box.deadline_at_ms) == (NOW, NOW + 700)
    assert box.refs == ["ref-req"]
    assert len(store) == 1
    assert store.get("r1") is box
    assert store.due(NOW + 699) == []
    assert store.due(NOW + 700) == [box]


def test_a_redelivered_request_joins_its_open_mailbox() -> None:
    store = MailboxStore()
    req = _req("r1")
    box = _open(store, req, "a").mailbox
    again = _open(store, req, "b", NOW + 5)
    assert again.outcome is Outcome.REDELIVERED
    assert again.mailbox is box
    assert again.release == ()
    assert box is not None
    assert box.refs == ["a", "b"]
    assert box.arrived_ms == NOW  # the clock is not restarted
    assert store.counters.duplicate_requests == 1


def test_duplicate_scores_keep_the_first() -> None:
    store = MailboxStore()
    req = _req("r1")
    _open(store, req, "req")
    first = store.add_score(_score(req, "fast", output=1), "s1", NOW + 10)
    second = store.add_score(_score(req, "fast", output=2), "s2", NOW + 20)
    other = store.add_score(_score(req, "slow", output=3), "s3", NOW + 30)
    assert (first.outcome, second.outcome, other.outcome) == (
        Outcome.FILLED,
        Outcome.DUPLICATE,
        Outcome.FILLED,
    )
    assert second.release == ("s2",)
    assert second.mailbox is None
    box = first.mailbox
    assert box is not None
    assert box.scores["fast"].score.output == 1
    assert box.scores["fast"].at_ms == NOW + 10
    assert box.duplicates == 1
    assert box.refs == ["req", "s1", "s3"]
    assert store.counters.duplicate_scores == 1


def test_a_mailbox_is_the_view_decide_reads_without_a_copy() -> None:
    req = request({"stream": True}, request_id="r1").model_copy(update={"attributes": {"u": "7"}})
    box = Mailbox(req, NOW, NOW + 1000)
    failed = ErrorBody(code="prompt_too_long", message="long")
    box.add(score_for(req, model="fast", status=ScoreStatus.ERROR, error=failed), NOW + 5)
    view: RequestView = box
    assert (view.request_id, dict(view.attributes), view.streams) == ("r1", {"u": "7"}, True)
    assert view.scores is box.scores
    arrival = view.scores["fast"]
    assert (arrival.status, arrival.output, arrival.role) == (
        ScoreStatus.ERROR,
        None,
        Role.CHAMPION,
    )
    assert (arrival.error, arrival.at_ms) == (failed, NOW + 5)
    assert not Mailbox(request({"stream": False}), NOW, NOW + 1).streams


def test_after_close_scores_are_late_and_requests_already_decided() -> None:
    store = MailboxStore()
    req = _req("r1")
    _open(store, req, "req")
    store.add_score(_score(req, "fast"), "s1", NOW + 10)
    closed = store.close("r1", NOW + 10)
    assert closed.closed
    assert closed.refs == ["req", "s1"]
    assert len(store) == 0
    assert store.is_decided("r1")
    late = store.add_score(_score(req, "slow"), "s2", NOW + 50)
    assert (late.outcome, late.mailbox, late.release) == (Outcome.LATE, None, ("s2",))
    assert store.counters.late_scores == 1
    again = _open(store, req, "req-again", NOW + 60)
    assert (again.outcome, again.mailbox, again.release) == (
        Outcome.ALREADY_DECIDED,
        None,
        ("req-again",),
    )
    assert store.counters.duplicate_requests == 1
    with pytest.raises(KeyError):
        store.close("r1", NOW + 70)


def test_an_orphan_score_is_attached_when_its_request_arrives() -> None:
    store = MailboxStore()
    req = _req("r1")
    orphan = store.add_score(_score(req, "fast", output="early"), "s1", NOW - 30)
    assert (orphan.outcome, orphan.mailbox, orphan.release) == (Outcome.ORPHANED, None, ())
    assert store.orphan_count == 1
    box = _open(store, req, "req").mailbox
    assert box is not None
    assert box.scores["fast"].score.output == "early"
    assert box.scores["fast"].at_ms == NOW  # counts as arriving with the request
    assert box.refs == ["req", "s1"]
    assert store.orphan_count == 0


def test_a_score_s_copy_opens_the_mailbox_and_the_request_record_joins_it_later() -> None:
    store = MailboxStore()
    req = request({"stream": True}, request_id="r1")
    score = score_for(req, model="fast", copy=True)
    assert store.add_score(score, "s1", NOW).outcome is Outcome.ORPHANED
    assert score.request is not None
    copy = score.request.envelope("r1", req.endpoint)
    got = store.open(copy, None, NOW, float(req.created_ms), streams=True, traceparent="tp")
    box = got.mailbox
    assert got.outcome is Outcome.OPENED
    assert box is not None
    assert (box.refs, box.read, box.streams, box.traceparent) == (["s1"], False, True, "tp")
    assert list(box.scores) == ["fast"]
    later = store.open(req, "req", NOW + 40, float(req.created_ms) + 40, size=7)
    assert (later.outcome, later.mailbox, later.release) == (Outcome.REDELIVERED, box, ())
    assert (box.refs, box.read, box.size) == (["req", "s1"], True, 7)  # the request leads
    assert store.counters.duplicate_requests == 0  # read once: no duplicate
    assert _open(store, req, "req-again").outcome is Outcome.REDELIVERED
    assert store.counters.duplicate_requests == 1


def test_a_request_decided_from_its_copy_is_checked_off_when_read() -> None:
    store = MailboxStore()
    req = _req("r1")
    store.add_score(score_for(req, model="fast", copy=True), "s1", NOW)
    store.open(req.model_copy(update={"payload": None}), None, NOW, float(req.created_ms))
    assert store.close("r1", NOW + 1).refs == ["s1"]
    first = _open(store, req, "req")
    assert (first.outcome, first.release) == (Outcome.ALREADY_DECIDED, ("req",))
    assert store.counters.duplicate_requests == 0
    again = _open(store, req, "req-again")  # read a second time: a duplicate
    assert (again.outcome, again.release) == (Outcome.ALREADY_DECIDED, ("req-again",))
    assert store.counters.duplicate_requests == 1


def test_a_duplicate_orphan_is_handed_back() -> None:
    store = MailboxStore()
    req = _req("r1")
    store.add_score(_score(req, "fast"), "s1", NOW)
    dup = store.add_score(_score(req, "fast"), "s2", NOW + 1)
    assert (dup.outcome, dup.release) == (Outcome.DUPLICATE, ("s2",))
    assert store.orphan_count == 1


def test_orphans_expire_after_their_ttl() -> None:
    store = MailboxStore(StoreLimits(orphan_ttl_ms=1000))
    a, b = _req("a"), _req("b")
    store.add_score(_score(a, "fast"), "a1", NOW)
    store.add_score(_score(a, "slow"), "a2", NOW + 500)
    store.add_score(_score(b, "fast"), "b1", NOW + 600)
    assert store.expire(NOW + 999) == []
    assert store.expire(NOW + 1000) == ["a1", "a2"]  # a group expires with its first score
    assert store.counters.orphans_expired == 2
    assert store.orphan_count == 1
    assert store.expire(NOW + 1600) == ["b1"]
    assert store.orphan_count == 0
    box = _open(store, a, "req", NOW + 2000).mailbox
    assert box is not None
    assert box.scores == {}


def test_the_orphan_pool_drops_its_oldest_group_when_full() -> None:
    store = MailboxStore(StoreLimits(max_orphans=2))
    a, b, c = _req("a"), _req("b"), _req("c")
    store.add_score(_score(a, "fast"), "a1", NOW)
    store.add_score(_score(b, "fast"), "b1", NOW + 1)
    full = store.add_score(_score(c, "fast"), "c1", NOW + 2)
    assert (full.outcome, full.release) == (Outcome.ORPHANED, ("a1",))
    assert store.counters.orphans_dropped == 1
    assert store.orphan_count == 2


def test_a_full_store_refuses_new_requests_and_remembers_them() -> None:
    store = MailboxStore(StoreLimits(max_open=2))
    reqs = [_req(f"r{i}") for i in range(3)]
    store.add_score(_score(reqs[2], "fast"), "orphan", NOW)
    assert _open(store, reqs[0], "q0").outcome is Outcome.OPENED
    assert _open(store, reqs[1], "q1").outcome is Outcome.OPENED
    refused = _open(store, reqs[2], "q2")
    assert (refused.outcome, refused.mailbox) == (Outcome.FULL, None)
    assert sorted(map(str, refused.release)) == ["orphan", "q2"]
    assert store.counters.rejected_full == 1
    assert len(store) == 2
    assert store.orphan_count == 0
    assert store.is_decided("r2")  # the caller answers it with an overload error
    assert store.add_score(_score(reqs[2], "slow"), "s", NOW).outcome is Outcome.LATE
    store.close("r0", NOW + 1)
    assert _open(store, _req("r3"), "q3", NOW + 1).outcome is Outcome.OPENED


def test_decided_ids_are_bounded_in_number() -> None:
    store = MailboxStore(StoreLimits(max_decided=3))
    for i in range(5):
        _open(store, _req(f"r{i}"), f"q{i}", NOW + i)
        store.close(f"r{i}", NOW + i)
    assert store.decided_count == 3
    assert not store.is_decided("r0")
    assert not store.is_decided("r1")
    assert store.is_decided("r4")
    # A forgotten id is no longer recognised as late: its score waits as an orphan.
    assert store.add_score(_score(_req("r0"), "fast"), "s", NOW).outcome is Outcome.ORPHANED


def test_decided_ids_are_bounded_in_age() -> None:
    store = MailboxStore(StoreLimits(decided_ttl_ms=1000))
    store.mark_decided("old", NOW)
    store.mark_decided("new", NOW + 600)
    store.expire(NOW + 999)
    assert store.is_decided("old")
    store.expire(NOW + 1000)
    assert not store.is_decided("old")
    assert store.is_decided("new")
    store.mark_decided("newest", NOW + 1700)  # remembering also forgets the expired
    assert store.decided_count == 1


def test_mark_decided_closes_an_open_mailbox_and_drops_orphans() -> None:
    store = MailboxStore()
    a, b = _req("a"), _req("b")
    _open(store, a, "qa")
    store.add_score(_score(a, "fast"), "sa", NOW + 1)
    store.add_score(_score(b, "fast"), "sb", NOW + 1)
    assert store.mark_decided("a", NOW + 2) == ("qa", "sa")
    assert store.mark_decided("b", NOW + 2) == ("sb",)
    assert store.mark_decided("c", NOW + 2) == ()
    assert (len(store), store.orphan_count) == (0, 0)
    assert store.counters.late_scores == 1
    assert _open(store, b, "qb", NOW + 3).outcome is Outcome.ALREADY_DECIDED
    assert store.due(NOW + 10_000) == []


def test_due_returns_each_mailbox_once_at_its_latest_schedule() -> None:
    store = MailboxStore()
    boxes = [_open(store, _req(f"r{i}", deadline_in_ms=1000), i).mailbox for i in range(3)]
    b0, b1, b2 = (box for box in boxes if box is not None)
    store.schedule(b0, NOW + 300)
    store.schedule(b1, NOW + 100)
    store.schedule(b1, NOW + 200)  # replaces NOW + 100
    store.close("r2", NOW)
    assert store.next_due_ms() == NOW + 200  # the replaced and the closed entries skipped
    assert store.due(NOW + 150) == []
    assert store.due(NOW + 300) == [b1, b0]
    assert store.next_due_ms() is None
    assert (b0.next_check_ms, b1.next_check_ms) == (None, None)
    assert store.due(NOW + 5000) == []  # popped: the caller decides or schedules again
    with pytest.raises(ValueError, match="not open"):
        store.schedule(b2, NOW + 400)


def test_rescheduling_keeps_the_heap_bounded() -> None:
    store = MailboxStore()
    box = _open(store, _req("r1"), "q").mailbox
    assert box is not None
    for i in range(10_000):
        store.schedule(box, NOW + i)
    assert len(store._heap) <= 2 * len(store) + 65
    assert store.due(NOW + 20_000) == [box]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        StoreLimits(max_open=0)
    with pytest.raises(ValueError):
        StoreLimits(orphan_ttl_ms=0)


def test_every_ref_comes_back_exactly_once() -> None:
    """A random mix of requests, scores, repeats, closes and expiries: at the end, every
    ref passed in has been handed back once (via release, close, mark_decided, expire)."""
    rng = random.Random(7)
    store = MailboxStore(StoreLimits(max_open=20, max_orphans=15, orphan_ttl_ms=300))
    given: list[str] = []
    back: Counter[str] = Counter()
    now = NOW

    def take(got: Handled) -> None:
        back.update(str(r) for r in got.release)

    reqs = [_req(f"r{i}") for i in range(60)]
    for step in range(3000):
        now += rng.random() * 5
        req = rng.choice(reqs)
        ref = f"ref{step}"
        given.append(ref)
        action = rng.random()
        if action < 0.3:
            take(store.open(req, ref, now, float(req.created_ms)))
        elif action < 0.85:
            status = rng.choice([ScoreStatus.OK, ScoreStatus.SKIPPED])
            take(store.add_score(_score(req, rng.choice("abc"), status=status), ref, now))
        else:
            given.pop()
            if store.get(req.request_id) is not None and action < 0.95:
                back.update(str(r) for r in store.close(req.request_id, now).refs)
            else:
                back.update(str(r) for r in store.mark_decided(req.request_id, now))
        back.update(str(r) for r in store.expire(now))
    for box in store.due(now + 10_000):
        back.update(str(r) for r in store.close(box.request_id, now).refs)
    back.update(str(r) for r in store.expire(now + 10_000))
    assert len(store) == 0
    assert store.orphan_count == 0
    assert back == Counter(given)
    counts = store.counters
    assert min(counts.late_scores, counts.duplicate_scores, counts.duplicate_requests) > 0
    assert min(counts.orphans_expired, counts.orphans_dropped, counts.rejected_full) > 0

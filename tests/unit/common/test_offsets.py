"""OffsetTracker: only the done prefix of each partition becomes committable."""

from __future__ import annotations

import pytest

from services.common.offsets import OffsetTracker, Ticket

T = "rdv.requests"
P0, P1 = (T, 0), (T, 1)


def test_nothing_is_committable_at_first() -> None:
    tracker = OffsetTracker()
    assert tracker.committable() == {}
    assert tracker.outstanding() == 0


def test_in_order_completion_commits_the_next_offset() -> None:
    tracker = OffsetTracker()
    tickets = [tracker.begin(T, 0, off) for off in (10, 11, 12)]
    tracker.done(tickets[0])
    assert tracker.committable() == {P0: 11}
    tracker.done(tickets[1])
    tracker.done(tickets[2])
    assert tracker.committable() == {P0: 13}
    assert tracker.committable() == {}  # popped: not reported twice


@pytest.mark.parametrize(
    ("done_order", "expected_after_each"),
    [
        ([0, 1, 2], [{P0: 1}, {P0: 2}, {P0: 3}]),
        ([2, 1, 0], [{}, {}, {P0: 3}]),
        ([1, 0, 2], [{}, {P0: 2}, {P0: 3}]),
        ([0, 2, 1], [{P0: 1}, {}, {P0: 3}]),
    ],
    ids=["in-order", "reversed", "second-first", "third-before-second"],
)
def test_a_later_record_waits_for_the_earlier_ones(
    done_order: list[int], expected_after_each: list[dict[tuple[str, int], int]]
) -> None:
    tracker = OffsetTracker()
    tickets = [tracker.begin(T, 0, off) for off in range(3)]
    seen = []
    for index in done_order:
        tracker.done(tickets[index])
        seen.append(tracker.committable())
    assert seen == expected_after_each


def test_outputs_in_flight_keep_a_record_open() -> None:
    tracker = OffsetTracker()
    ticket = tracker.begin(T, 0, 5)
    tracker.add(ticket, 2)  # two outputs produced, not acknowledged yet
    tracker.done(ticket)  # processing finished
    assert ticket.pending == 2
    assert tracker.committable() == {}
    tracker.done(ticket)  # first ack
    assert tracker.committable() == {}
    tracker.done(ticket)  # second ack
    assert ticket.pending == 0
    assert tracker.committable() == {P0: 6}


def test_add_and_done_with_counts() -> None:
    tracker = OffsetTracker()
    ticket = tracker.begin(T, 0, 0)
    tracker.add(ticket, 3)
    assert ticket.pending == 4
    tracker.done(ticket, 3)
    assert ticket.pending == 1
    assert tracker.committable() == {}
    tracker.done(ticket)
    assert tracker.committable() == {P0: 1}


def test_a_held_record_blocks_its_partition_but_not_others() -> None:
    tracker = OffsetTracker()
    held = tracker.begin(T, 0, 0)
    after_held = tracker.begin(T, 0, 1)
    other = tracker.begin(T, 1, 0)
    other_topic = tracker.begin("rdv.scores", 0, 7)
    tracker.add(held)  # a hold: the rendezvous waits for more scores
    for ticket in (held, after_held, other, other_topic):
        tracker.done(ticket)
    assert tracker.committable() == {P1: 1, ("rdv.scores", 0): 8}
    tracker.done(held)  # the hold is released
    assert tracker.committable() == {P0: 2}


def test_done_more_than_begun_raises() -> None:
    tracker = OffsetTracker()
    ticket = tracker.begin(T, 0, 42)
    with pytest.raises(ValueError, match="offset 42"):
        tracker.done(ticket, 2)
    assert ticket.pending == 1  # unchanged by the failed call
    tracker.done(ticket)
    with pytest.raises(ValueError, match="more than it began"):
        tracker.done(ticket)


def test_get_returns_the_open_ticket_until_it_is_committed() -> None:
    tracker = OffsetTracker()
    ticket = tracker.begin(T, 0, 3)
    assert tracker.get(T, 0, 3) is ticket
    assert tracker.get(T, 0, 4) is None
    assert tracker.get(T, 1, 3) is None
    tracker.done(ticket)
    assert tracker.get(T, 0, 3) is ticket  # done but not yet popped
    tracker.committable()
    assert tracker.get(T, 0, 3) is None


def test_retain_drops_partitions_no_longer_owned() -> None:
    tracker = OffsetTracker()
    kept = tracker.begin(T, 0, 0)
    lost = [tracker.begin(T, 1, off) for off in (0, 1)]
    tracker.done(lost[0])
    tracker.retain(frozenset({P0}))
    assert tracker.get(T, 1, 0) is None
    assert tracker.get(T, 1, 1) is None
    assert tracker.get(T, 0, 0) is kept
    assert tracker.outstanding() == 1
    # The lost partition is another member's now: nothing of it is ever committed.
    assert tracker.committable() == {}
    tracker.done(kept)
    assert tracker.committable() == {P0: 1}


def test_retain_with_nothing_owned_drops_everything() -> None:
    tracker = OffsetTracker()
    for part in (0, 1, 2):
        tracker.begin(T, part, 0)
    tracker.retain(frozenset())
    assert tracker.outstanding() == 0
    assert all(tracker.get(T, part, 0) is None for part in (0, 1, 2))


def test_a_partition_taken_back_after_retain_starts_afresh() -> None:
    tracker = OffsetTracker()
    tracker.begin(T, 0, 5)  # never finished before the partition was revoked
    tracker.retain(frozenset())
    again = tracker.begin(T, 0, 5)  # re-read from the last commit
    tracker.done(again)
    assert tracker.committable() == {P0: 6}


def test_outstanding_counts_records_with_work_left() -> None:
    tracker = OffsetTracker()
    tickets = [tracker.begin(T, 0, off) for off in range(4)]
    assert tracker.outstanding() == 4
    tracker.done(tickets[2])  # done but behind unfinished ones: not outstanding
    assert tracker.outstanding() == 3
    tracker.add(tickets[0])
    tracker.done(tickets[0])
    assert tracker.outstanding() == 3  # still one output in flight
    tracker.done(tickets[0])
    tracker.done(tickets[1])
    tracker.done(tickets[3])
    assert tracker.outstanding() == 0
    assert tracker.committable() == {P0: 4}
    assert tracker.outstanding() == 0


def test_begin_returns_a_fresh_ticket() -> None:
    ticket = OffsetTracker().begin(T, 3, 99)
    assert isinstance(ticket, Ticket)
    assert (ticket.partition, ticket.offset, ticket.pending) == ((T, 3), 99, 1)


def test_a_rewound_partition_replaces_the_tickets_it_reads_again() -> None:
    tracker = OffsetTracker()
    for offset in (0, 1, 2):
        tracker.begin("in", 0, offset)
    # a rebalance hands the partition back from the last commit (offset 1)
    again = [tracker.begin("in", 0, offset) for offset in (1, 2)]
    first = tracker.get("in", 0, 0)
    assert first is not None
    OffsetTracker.done(first)
    for ticket in again:
        OffsetTracker.done(ticket)
    assert tracker.committable() == {("in", 0): 3}
    assert tracker.outstanding() == 0


@pytest.mark.parametrize("count", [0, -1])
def test_counts_below_one_are_refused(count: int) -> None:
    ticket = OffsetTracker().begin("in", 0, 0)
    with pytest.raises(ValueError, match="at least 1"):
        OffsetTracker.add(ticket, count)
    with pytest.raises(ValueError, match="at least 1"):
        OffsetTracker.done(ticket, count)

"""Which consumed offsets are safe to commit (pure logic, no Kafka).

A record is done when it was processed, every output it caused was acknowledged by
the broker, and nobody holds it open. Per partition, only the longest prefix of done
records may be committed: committing offset N means "everything before N is done".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

Partition = tuple[str, int]


@dataclass(eq=False)
class Ticket:
    """One consumed record's outstanding work: processing, outputs in flight, holds."""

    partition: Partition
    offset: int
    pending: int = 1  # the processing itself counts as one until finish()


class OffsetTracker:
    """Tracks tickets per partition in offset order and yields committable positions."""

    def __init__(self) -> None:
        self._queues: dict[Partition, deque[Ticket]] = {}
        self._by_key: dict[tuple[str, int, int], Ticket] = {}

    def begin(self, topic: str, partition: int, offset: int) -> Ticket:
        ticket = Ticket((topic, partition), offset)
        queue = self._queues.setdefault(ticket.partition, deque())
        while queue and queue[-1].offset >= offset:  # the consumer rewound (rebalance)
            del self._by_key[(topic, partition, queue.pop().offset)]
        queue.append(ticket)
        self._by_key[(topic, partition, offset)] = ticket
        return ticket

    def get(self, topic: str, partition: int, offset: int) -> Ticket | None:
        """The open ticket of a record taken in with ``begin``; None once it was
        committed or its partition was given away."""
        return self._by_key.get((topic, partition, offset))

    @staticmethod
    def add(ticket: Ticket, count: int = 1) -> None:
        """The record now waits for ``count`` more things (outputs in flight, holds)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        ticket.pending += count

    @staticmethod
    def done(ticket: Ticket, count: int = 1) -> None:
        """``count`` of the things the record waited for are finished."""
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        if ticket.pending < count:
            raise ValueError(f"ticket at offset {ticket.offset} finished more than it began")
        ticket.pending -= count

    def committable(self) -> dict[Partition, int]:
        """Pop the done prefix of each partition; returns partition -> next offset."""
        out: dict[Partition, int] = {}
        for part, queue in self._queues.items():
            while queue and queue[0].pending == 0:
                ticket = queue.popleft()
                del self._by_key[(*part, ticket.offset)]
                out[part] = ticket.offset + 1
        return out

    def retain(self, owned: frozenset[Partition]) -> None:
        """Drop the tickets of partitions this member no longer owns (after a
        rebalance their records are another member's, re-read from the last commit)."""
        for part in [p for p in self._queues if p not in owned]:
            for ticket in self._queues.pop(part):
                del self._by_key[(*part, ticket.offset)]

    def outstanding(self) -> int:
        """Records taken in whose work is not finished yet."""
        return sum(1 for q in self._queues.values() for t in q if t.pending)

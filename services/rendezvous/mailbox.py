"""Mailboxes (one per open request) and the bounded store that owns them. No I/O, no clock:
every method takes the monotonic time it should act at.

Refs are opaque handles of the Kafka records that built a mailbox (the service holds
each record's offset until the mailbox closes). The rule that lets the caller release
every ref exactly once: **a ref passed in is either kept by the store or handed back
in a ``release`` tuple**. Kept refs come back later, exactly once, through
``close`` (in ``Mailbox.refs``), ``mark_decided`` or ``expire``.

Bounds, by count and by bytes (each ref's ``size``: the record's key and value):

- open mailboxes: at most ``max_open``, and their requests and scores at most
  ``max_open_bytes``. A new request that would pass either (its own bytes counted,
  with ``score_reserve`` of the byte budget kept free for the scores of requests
  already open) is refused with ``Outcome.FULL``: the caller answers it with an
  overload error at once, and the id is remembered as decided; open requests are
  never dropped. A score that would pass ``max_open_bytes`` is refused with
  ``Outcome.SHED`` (ref handed back): its mailbox decides without it.
- orphan scores: at most ``max_orphans`` and ``max_orphan_bytes``; when full, the
  oldest orphan groups are dropped (a score larger than the whole budget is dropped
  at once).
- a request whose deadline is more than ``max_deadline_ms`` ahead is refused with
  ``Outcome.TOO_FAR`` (ref handed back, nothing stored): it would hold its partition's
  offsets that long; the caller dead-letters it.
- the decided-id memory: ``max_decided`` ids and ``decided_ttl_ms`` of age.

A request record delivered again at the same position (the same ref) while its
mailbox is open is not added twice.

A ``Mailbox`` is the ``services.common.arrivals.RequestView`` that ``decide`` reads, as
it is: no copy per decision.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from pydantic import JsonValue

from services.common.arrivals import Grant
from services.common.bandit import Learned
from services.common.chat import wants_stream
from services.common.messages import ErrorBody, RequestEnvelope, Role, Score, ScoreStatus


class ScoreArrival(NamedTuple):
    """A score and the monotonic ms at which it reached its mailbox (an ``Arrival``)."""

    score: Score
    at_ms: float

    @property
    def status(self) -> ScoreStatus:
        return self.score.status

    @property
    def output(self) -> JsonValue:
        return self.score.output

    @property
    def role(self) -> Role:
        return self.score.role

    @property
    def error(self) -> ErrorBody | None:
        return self.score.error


@dataclass(eq=False)
class Mailbox:
    """One open request: its clock, its deadline, the first score of each model."""

    request: RequestEnvelope
    arrived_ms: float  # monotonic: the request's clock starts here
    deadline_at_ms: float  # monotonic: the request's own deadline
    scores: dict[str, ScoreArrival] = field(default_factory=dict)  # model -> first score
    refs: list[object] = field(default_factory=list)
    duplicates: int = 0  # scores dropped because their model had already scored
    closed: bool = False
    next_check_ms: float | None = None  # when due() returns it next; None: not scheduled
    grant: Grant | None = None  # a streaming request's granted model, once chosen
    learned: Learned | None = None  # the bandit's rewards, pinned at its first decision
    size: int = 0  # bytes of the records held (request and scores)
    read: bool = True  # the request record was read (False: opened from a score's copy)
    traceparent: str | None = None  # the request's trace context, from a score's copy
    _seq: int = field(default=-1, repr=False)  # which heap entry is current
    streams: bool = field(init=False)  # the client asked for a streamed answer

    def __post_init__(self) -> None:
        self.streams = wants_stream(self.request.payload)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def attributes(self) -> Mapping[str, str]:
        return self.request.attributes

    def add(self, score: Score, at_ms: float) -> bool:
        """Keep the first score per model; False (and counted) for a repeat."""
        if score.model in self.scores:
            self.duplicates += 1
            return False
        self.scores[score.model] = ScoreArrival(score, at_ms)
        return True


class Outcome(StrEnum):
    """What the store did with a request or score record."""

    OPENED = "opened"  # request: new mailbox, ref kept
    REDELIVERED = "redelivered"  # request: already open; ref kept in that mailbox
    ALREADY_DECIDED = "already_decided"  # request: decided before; ref handed back
    FULL = "full"  # request: refused, store full; ref handed back, id now decided
    TOO_FAR = "too_far"  # request: deadline beyond max_deadline_ms; ref handed back
    FILLED = "filled"  # score: went into its open mailbox, ref kept
    DUPLICATE = "duplicate"  # score: its model already scored this request; ref handed back
    LATE = "late"  # score: its request was decided; ref handed back
    SHED = "shed"  # score: the open mailboxes' byte budget is spent; ref handed back
    ORPHANED = "orphaned"  # score: request not seen yet; kept until it arrives or expires


@dataclass(frozen=True, slots=True)
class Handled:
    """A store call's result: what happened, the mailbox to (re)decide, refs to release now."""

    outcome: Outcome
    mailbox: Mailbox | None = None
    release: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Memory bounds of a MailboxStore."""

    max_open: int = 100_000
    max_orphans: int = 100_000  # orphan scores held, over all requests
    orphan_ttl_ms: float = 60_000.0  # a group expires this long after its first score
    max_decided: int = 1_000_000  # decided ids remembered for late/duplicate detection
    decided_ttl_ms: float = 600_000.0
    max_open_bytes: int = 512 * 2**20  # requests and scores of open mailboxes
    max_orphan_bytes: int = 128 * 2**20  # orphan scores
    score_reserve: float = 0.1  # share of max_open_bytes new requests leave to scores
    max_deadline_ms: float = 600_000.0  # furthest deadline accepted, from arrival

    def __post_init__(self) -> None:
        counts = (self.max_open, self.max_orphans, self.max_decided)
        if min(*counts, self.max_open_bytes, self.max_orphan_bytes) < 1:
            raise ValueError(f"store limits must be at least 1: {self}")
        if min(self.orphan_ttl_ms, self.decided_ttl_ms, self.max_deadline_ms) <= 0:
            raise ValueError(f"store time limits must be positive: {self}")
        if not 0 <= self.score_reserve < 1:
            raise ValueError(f"score_reserve must be in [0, 1): {self.score_reserve}")


@dataclass
class StoreCounters:
    """Monotonic counts the service exports as metrics."""

    late_scores: int = 0
    duplicate_scores: int = 0
    duplicate_requests: int = 0  # request records for an id already open or decided
    orphans_expired: int = 0  # orphan scores whose request never came in time
    orphans_dropped: int = 0  # orphan scores evicted because the orphan pool was full
    rejected_full: int = 0  # requests refused because max_open mailboxes were open
    rejected_bytes: int = 0  # requests refused because max_open_bytes was spent
    rejected_deadline: int = 0  # requests refused for a deadline beyond max_deadline_ms
    scores_shed: int = 0  # scores refused because max_open_bytes was spent


@dataclass(frozen=True, slots=True)
class _Orphan:
    score: Score
    ref: object
    size: int


@dataclass
class _OrphanGroup:
    first_ms: float
    scores: dict[str, _Orphan] = field(default_factory=dict)


class MailboxStore:
    """Open mailboxes, orphan scores and recently decided ids, all bounded."""

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self.counters = StoreCounters()
        self._open: dict[str, Mailbox] = {}
        self._heap: list[tuple[float, int, Mailbox]] = []
        self._seq = 0
        self._orphans: OrderedDict[str, _OrphanGroup] = OrderedDict()  # oldest first
        self._orphan_count = 0
        self._open_bytes = 0
        self._orphan_bytes = 0
        self._decided: OrderedDict[str, float] = OrderedDict()  # id -> when, oldest first
        self._unread: set[str] = set()  # decided ids whose request record was not read yet

    def __len__(self) -> int:
        """Open mailboxes."""
        return len(self._open)

    @property
    def orphan_count(self) -> int:
        return self._orphan_count

    @property
    def open_bytes(self) -> int:
        """Bytes of the requests and scores held in open mailboxes."""
        return self._open_bytes

    @property
    def orphan_bytes(self) -> int:
        return self._orphan_bytes

    @property
    def decided_count(self) -> int:
        return len(self._decided)

    def get(self, request_id: str) -> Mailbox | None:
        return self._open.get(request_id)

    def is_decided(self, request_id: str) -> bool:
        return request_id in self._decided

    def open(
        self,
        request: RequestEnvelope,
        ref: object | None,
        now_ms: float,
        wall_ms: float,
        size: int = 0,
        *,
        streams: bool | None = None,
        traceparent: str | None = None,
    ) -> Handled:
        """Open the request's mailbox (clock starts at ``now_ms``), attaching its orphans.

        The mailbox's deadline is ``now_ms + request.deadline_epoch_ms - wall_ms``; it is
        scheduled at that deadline until the caller calls ``schedule`` with an earlier
        time. ``size`` is the request record's bytes. ``ref`` None: opened from a
        score's copy of the request (``Score.request``), before the request record was
        read; ``streams`` then says whether it asked for a streamed answer, and
        ``traceparent`` gives its trace context.
        """
        rid = request.request_id
        if (known := self._known(rid, ref, size)) is not None:
            return known
        if request.deadline_epoch_ms - wall_ms > self.limits.max_deadline_ms:
            self.counters.rejected_deadline += 1
            return Handled(Outcome.TOO_FAR, release=tuple(_some(ref)))
        group = self._orphans.get(rid)
        group_bytes = 0 if group is None else sum(o.size for o in group.scores.values())
        room = self.limits.max_open_bytes * (1.0 - self.limits.score_reserve)
        over_bytes = self._open_bytes + size + group_bytes > room
        if len(self._open) >= self.limits.max_open or over_bytes:
            if len(self._open) >= self.limits.max_open:
                self.counters.rejected_full += 1
            else:
                self.counters.rejected_bytes += 1
            released = self._drop_orphans(rid)
            self._remember(rid, now_ms)
            return Handled(Outcome.FULL, release=(*_some(ref), *released))
        mailbox = Mailbox(
            request, now_ms, now_ms + (request.deadline_epoch_ms - wall_ms), refs=_some(ref)
        )
        if streams is not None:
            mailbox.streams = streams
        mailbox.read = ref is not None
        mailbox.traceparent = traceparent
        mailbox.size = size
        if group is not None:
            del self._orphans[rid]
            self._orphan_count -= len(group.scores)
            self._orphan_bytes -= group_bytes
            for orphan in group.scores.values():  # they count as arriving with the request
                mailbox.add(orphan.score, now_ms)
                mailbox.refs.append(orphan.ref)
            mailbox.size += group_bytes
        self._open_bytes += mailbox.size
        self._open[rid] = mailbox
        self.schedule(mailbox, mailbox.deadline_at_ms)
        return Handled(Outcome.OPENED, mailbox)

    def _known(self, rid: str, ref: object | None, size: int) -> Handled | None:
        """A request decided or open already (None when it is new)."""
        if rid in self._decided:
            if rid in self._unread:  # decided from its scores' copy: read only now
                self._unread.discard(rid)
            else:
                self.counters.duplicate_requests += 1
            return Handled(Outcome.ALREADY_DECIDED, release=tuple(_some(ref)))
        existing = self._open.get(rid)
        if existing is None:
            return None
        if existing.read or ref is None:
            self.counters.duplicate_requests += 1
        if ref is not None and ref not in existing.refs:  # the same record is kept once
            # the request record leads its refs, as when it opened the mailbox (the loop
            # dead-letters an answer's first source when it can never be delivered)
            existing.refs.insert(0 if not existing.read else len(existing.refs), ref)
            existing.size += size
            self._open_bytes += size
        existing.read = existing.read or ref is not None
        return Handled(Outcome.REDELIVERED, existing)

    def add_score(self, score: Score, ref: object, now_ms: float, size: int = 0) -> Handled:
        """File a score (``size``: its record's bytes): into its open mailbox, as late,
        as a duplicate, shed, or as an orphan."""
        rid = score.request_id
        if rid in self._decided:
            self.counters.late_scores += 1
            return Handled(Outcome.LATE, release=(ref,))
        mailbox = self._open.get(rid)
        if mailbox is not None:
            return self._fill(mailbox, score, ref, now_ms, size)
        group = self._orphans.get(rid)
        if group is not None and score.model in group.scores:
            self.counters.duplicate_scores += 1
            return Handled(Outcome.DUPLICATE, release=(ref,))
        if size > self.limits.max_orphan_bytes:  # could never fit: dropped at once
            self.counters.orphans_dropped += 1
            return Handled(Outcome.ORPHANED, release=(ref,))
        released: list[object] = []
        while self._orphans and (
            self._orphan_count >= self.limits.max_orphans
            or self._orphan_bytes + size > self.limits.max_orphan_bytes
        ):
            oldest = next(iter(self._orphans))
            self.counters.orphans_dropped += len(self._orphans[oldest].scores)
            released.extend(self._drop_orphans(oldest))
        group = self._orphans.get(rid)
        if group is None:
            group = self._orphans[rid] = _OrphanGroup(now_ms)
        group.scores[score.model] = _Orphan(score, ref, size)
        self._orphan_count += 1
        self._orphan_bytes += size
        return Handled(Outcome.ORPHANED, release=tuple(released))

    def _fill(
        self, mailbox: Mailbox, score: Score, ref: object, now_ms: float, size: int
    ) -> Handled:
        if score.model in mailbox.scores:
            mailbox.duplicates += 1
            self.counters.duplicate_scores += 1
            return Handled(Outcome.DUPLICATE, release=(ref,))
        if self._open_bytes + size > self.limits.max_open_bytes:
            self.counters.scores_shed += 1
            return Handled(Outcome.SHED, release=(ref,))
        mailbox.add(score, now_ms)
        mailbox.refs.append(ref)
        mailbox.size += size
        self._open_bytes += size
        return Handled(Outcome.FILLED, mailbox)

    def close(self, request_id: str, now_ms: float) -> Mailbox:
        """The request was answered: forget its mailbox, remember its id as decided.

        The caller releases ``mailbox.refs``. KeyError if the request is not open.
        """
        mailbox = self._open.pop(request_id)
        mailbox.closed = True
        mailbox.next_check_ms = None
        self._open_bytes -= mailbox.size
        self._remember(request_id, now_ms)
        if not mailbox.read:
            self._unread.add(request_id)
        return mailbox

    def mark_decided(self, request_id: str, now_ms: float) -> tuple[object, ...]:
        """Someone (an earlier run, another instance) decided this request: close its
        mailbox and drop its orphans without deciding. Returns the refs to release."""
        if request_id in self._open:
            return tuple(self.close(request_id, now_ms).refs)
        released = self._drop_orphans(request_id)  # scores for a decided request: late
        self.counters.late_scores += len(released)
        self._remember(request_id, now_ms)
        return tuple(released)

    def drop(self, request_id: str) -> tuple[object, ...]:
        """Forget an open mailbox *without* deciding (its partition went to another
        instance, which reads the request again). Returns the refs to release."""
        mailbox = self._open.pop(request_id, None)
        if mailbox is None:
            return ()
        mailbox.closed = True
        mailbox.next_check_ms = None
        self._open_bytes -= mailbox.size
        return tuple(mailbox.refs)

    def mailboxes(self) -> list[Mailbox]:
        """The open mailboxes (a snapshot)."""
        return list(self._open.values())

    def schedule(self, mailbox: Mailbox, at_ms: float) -> None:
        """``due`` returns the mailbox once ``at_ms`` has come (replacing its earlier time)."""
        if self._open.get(mailbox.request_id) is not mailbox:
            raise ValueError(f"mailbox {mailbox.request_id!r} is not open in this store")
        self._seq += 1
        mailbox._seq = self._seq
        mailbox.next_check_ms = at_ms
        heapq.heappush(self._heap, (at_ms, self._seq, mailbox))
        if len(self._heap) > 2 * len(self._open) + 64:  # drop entries that were replaced
            self._heap = [e for e in self._heap if self._current(e)]
            heapq.heapify(self._heap)

    def next_due_ms(self) -> float | None:
        """When ``due`` next returns a mailbox (monotonic ms); None when none is scheduled."""
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def due(self, now_ms: float) -> list[Mailbox]:
        """Open mailboxes whose check time has come, earliest first. They are no longer
        scheduled: the caller decides and closes each, or schedules it again."""
        out: list[Mailbox] = []
        while self._heap and self._heap[0][0] <= now_ms:
            entry = heapq.heappop(self._heap)
            if self._current(entry):
                entry[2].next_check_ms = None
                entry[2]._seq = -1
                out.append(entry[2])
        return out

    def expire(self, now_ms: float) -> list[object]:
        """Evict orphan groups older than ``orphan_ttl_ms`` (returns their refs to release)
        and forget decided ids older than ``decided_ttl_ms``."""
        released: list[object] = []
        ttl = self.limits.orphan_ttl_ms
        while self._orphans:
            rid, group = next(iter(self._orphans.items()))
            if group.first_ms + ttl > now_ms:
                break
            self.counters.orphans_expired += len(group.scores)
            released.extend(self._drop_orphans(rid))
        self._forget_decided(now_ms)
        return released

    def _current(self, entry: tuple[float, int, Mailbox]) -> bool:
        return not entry[2].closed and entry[2]._seq == entry[1]

    def _drop_orphans(self, request_id: str) -> list[object]:
        group = self._orphans.pop(request_id, None)
        if group is None:
            return []
        self._orphan_count -= len(group.scores)
        self._orphan_bytes -= sum(orphan.size for orphan in group.scores.values())
        return [orphan.ref for orphan in group.scores.values()]

    def _remember(self, request_id: str, now_ms: float) -> None:
        self._decided[request_id] = now_ms
        self._decided.move_to_end(request_id)
        while len(self._decided) > self.limits.max_decided:
            self._unread.discard(self._decided.popitem(last=False)[0])
        self._forget_decided(now_ms)

    def _forget_decided(self, now_ms: float) -> None:
        horizon = now_ms - self.limits.decided_ttl_ms
        while self._decided:
            rid, at = next(iter(self._decided.items()))
            if at > horizon:
                break
            del self._decided[rid]
            self._unread.discard(rid)


def _some(ref: object | None) -> list[object]:
    return [] if ref is None else [ref]

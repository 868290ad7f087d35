"""Reading the topics back after a chaos run, and the arithmetic on what was read:
records per request id on the replies and decisions topics (a double answer is a
second record for one id), and dead letters matched to the poison records injected
(per class and per reader, counting distinct origin records)."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bench.chaos_poison import PREFIX, READERS, Poison, poison_id
from services.common.codec import decode
from services.common.errors import MessageError
from services.common.kafka import Record, consumer_config, read_since
from services.common.messages import DeadLetter
from services.common.settings import KafkaSettings
from services.common.topics import Topics

READ_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Window:
    """A scenario's time span (wall seconds): records first seen in it belong to it."""

    name: str
    start: float
    end: float


@dataclass
class Tally:
    """Per request id: how many records, and when the first one was written (ms)."""

    count: dict[str, int] = field(default_factory=dict)
    first_ms: dict[str, int] = field(default_factory=dict)

    def add(self, request_id: str, ts_ms: int) -> None:
        self.count[request_id] = self.count.get(request_id, 0) + 1
        if request_id not in self.first_ms or ts_ms < self.first_ms[request_id]:
            self.first_ms[request_id] = ts_ms


def tally(pairs: Iterable[tuple[str, int]]) -> Tally:
    """(request id, record timestamp ms) pairs -> a Tally."""
    out = Tally()
    for rid, ts in pairs:
        out.add(rid, ts)
    return out


def doubles(t: Tally, windows: list[Window], *, poison: bool = False) -> dict[str, int]:
    """Window name -> request ids with more than one record, each id in the window of
    its first record; ids outside every window go to ``"(between)"``. Poison ids are
    left out unless ``poison``."""
    out = {w.name: 0 for w in windows}
    for rid, n in t.count.items():
        if n < 2 or rid.startswith(PREFIX) != poison:
            continue
        name = window_of(t.first_ms[rid] / 1000.0, windows)
        out[name] = out.get(name, 0) + 1
    return out


def window_of(at_s: float, windows: list[Window]) -> str:
    for w in windows:
        if w.start <= at_s < w.end:
            return w.name
    return "(between)"


@dataclass
class LetterTally:
    """Dead letters matched to poison classes, and the others."""

    # (poison class, service) -> distinct origin records dead-lettered
    by_class: dict[tuple[str, str], int] = field(default_factory=dict)
    # (poison class, service) -> dead-letter records (a re-read may write another)
    records: dict[tuple[str, str], int] = field(default_factory=dict)
    # dead letters of records that were not poison: (window, service, topic role) -> n
    others: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # reasons seen on the others (first few)
    other_errors: list[str] = field(default_factory=list)


def match_letters(
    letters: Iterable[DeadLetter],
    poisons: list[Poison],
    roles: Mapping[str, str],
    windows: list[Window],
) -> LetterTally:
    """Match dead letters to the poison records injected (by the poison id their key or
    value carries, and the origin topic's role). ``roles``: topic name -> role."""
    by_id: dict[tuple[str, str], str] = {}
    for p in poisons:
        pid = poison_id(p.out.key, p.out.value)
        if pid is not None:
            by_id[(pid, p.role)] = p.cls
    out = LetterTally()
    seen: set[tuple[str, str, int, int]] = set()
    for dl in letters:
        role = roles.get(dl.origin_topic, dl.origin_topic)
        value = _b64(dl.value_b64)
        pid = poison_id(None if dl.key is None else dl.key.encode(), value)
        cls = by_id.get((pid, role)) if pid is not None else None
        if cls is None:
            name = window_of(dl.failed_ms / 1000.0, windows)
            key3 = (name, dl.service, role)
            out.others[key3] = out.others.get(key3, 0) + 1
            if len(out.other_errors) < 10:
                out.other_errors.append(f"{dl.service} {role}: {dl.error_code}: {dl.error[:160]}")
            continue
        key = (cls, reader_of(dl.service, role))
        out.records[key] = out.records.get(key, 0) + 1
        origin = (dl.service, dl.origin_topic, dl.origin_partition, dl.origin_offset)
        if origin not in seen:
            seen.add(origin)
            out.by_class[key] = out.by_class.get(key, 0) + 1
    return out


def reader_of(service: str, role: str) -> str:
    """The reader of ``role`` a dead letter's ``service`` names: itself, or the reader
    it is a part of (``rendezvous.control`` -> ``rendezvous``)."""
    for reader in READERS.get(role, ()):
        if service == reader or service.startswith((reader + ".", reader + "-")):
            return reader
    return service


def letter_score(poisons: list[Poison], got: Mapping[tuple[str, str], int]) -> tuple[int, int, int]:
    """(dead letters that were expected and came, expected, unexpected): per class and
    reader, at most the expected count is a hit; beyond it, or from a reader that was
    neither expected nor allowed to refuse the class, a dead letter is unexpected."""
    expected = expected_letters(poisons)
    allowed = {(p.cls, r) for p in poisons for r in p.may}
    classes = {p.cls for p in poisons}
    hit = unexpected = 0
    for (cls, reader), n in got.items():
        if cls not in classes:
            continue
        exp = expected.get((cls, reader), 0)
        hit += min(n, exp)
        if (cls, reader) not in allowed:
            unexpected += max(0, n - exp)
    return hit, sum(expected.values()), unexpected


def expected_letters(poisons: list[Poison]) -> dict[tuple[str, str], int]:
    """(poison class, service) -> records of that class the service must dead-letter."""
    out: dict[tuple[str, str], int] = {}
    for p in poisons:
        for svc in p.expect:
            out[(p.cls, svc)] = out.get((p.cls, svc), 0) + 1
    return out


def _b64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


# -- reading -------------------------------------------------------------------------


def read_topic(kafka: KafkaSettings, topics: Topics, role: str, since_ms: int) -> list[Record]:
    conf = consumer_config(kafka, "unused", "chaos-readback")
    parts = range(topics.partitions(role))
    return read_since(conf, topics.by_role[role], parts, since_ms, READ_TIMEOUT_S)


def keyed(records: Iterable[Record]) -> list[tuple[str, int]]:
    """(key as text, timestamp ms) of records that have a key."""
    return [
        (r.key.decode("utf-8", errors="replace"), r.timestamp_ms)
        for r in records
        if r.key is not None
    ]


def dead_letters(records: Iterable[Record]) -> list[DeadLetter]:
    out = []
    for rec in records:
        try:
            out.append(decode(rec.value, DeadLetter))
        except MessageError:
            continue
    return out

"""Prometheus text of several processes read twice, as ``rdv top`` needs it: samples
summed over processes, counter increases and rates between the two reads, and quantiles
from histogram buckets (pure: no I/O, no clock)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Key = tuple[str, ...]  # the values of the labels a figure is grouped by


@dataclass(frozen=True)
class Scrape:
    """One process's /metrics as read at ``at`` (monotonic seconds), or why it was not."""

    target: str
    at: float
    text: str | None
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """One round of scrapes: target -> (sample name, labels) -> value."""

    at: dict[str, float]
    samples: dict[str, dict[tuple[str, Labels], float]]
    down: dict[str, str] = field(default_factory=dict)  # target -> why it was not read

    @classmethod
    def of(cls, scrapes: Sequence[Scrape]) -> Snapshot:
        """Parse every scrape; one that failed, or whose text is not Prometheus text,
        is down (with the reason), not an error."""
        at: dict[str, float] = {}
        samples: dict[str, dict[tuple[str, Labels], float]] = {}
        down: dict[str, str] = {}
        for scrape in scrapes:
            if scrape.text is None:
                down[scrape.target] = scrape.error or "not read"
                continue
            try:
                samples[scrape.target] = parse(scrape.text)
            except ValueError as exc:
                down[scrape.target] = f"not Prometheus text: {exc}"
                continue
            at[scrape.target] = scrape.at
        return cls(at, samples, down)

    def select(self, name: str, **match: str) -> Iterator[tuple[str, dict[str, str], float]]:
        """(target, labels, value) of every sample ``name`` whose labels include ``match``."""
        for target, found in self.samples.items():
            for (sample, labels), value in found.items():
                if sample != name:
                    continue
                pairs = dict(labels)
                if all(pairs.get(k) == v for k, v in match.items()):
                    yield target, pairs, value


def parse(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of a Prometheus text exposition: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(labels: Mapping[str, str], by: Sequence[str]) -> Key:
    return tuple(labels.get(name, "") for name in by)


def total(snap: Snapshot, name: str, by: Sequence[str], **match: str) -> dict[Key, float]:
    """``name`` summed over processes and the labels not in ``by``."""
    out: dict[Key, float] = {}
    for _target, labels, value in snap.select(name, **match):
        k = key(labels, by)
        out[k] = out.get(k, 0.0) + value
    return out


def extreme(
    snap: Snapshot, name: str, by: Sequence[str], pick: str, **match: str
) -> dict[Key, float]:
    """``name``'s largest (``pick="max"``) or smallest (``"min"``) value per group."""
    choose = max if pick == "max" else min
    out: dict[Key, float] = {}
    for _target, labels, value in snap.select(name, **match):
        if math.isnan(value):
            continue
        k = key(labels, by)
        out[k] = choose(out[k], value) if k in out else value
    return out


def increase(
    before: Snapshot, after: Snapshot, name: str, by: Sequence[str], **match: str
) -> tuple[dict[Key, float], dict[Key, float]]:
    """A counter's increase between the snapshots and its rate per second, per group,
    summed over processes. A value below the earlier one is a restart (the counter
    began again from 0); a series new in a process read both times began at 0; a
    process read only once adds nothing."""
    grown: dict[Key, float] = {}
    rates: dict[Key, float] = {}
    for target, labels, value in after.select(name, **match):
        if target not in before.samples:
            continue
        earlier = before.samples[target].get((name, frozenset(labels.items())), 0.0)
        delta = value - earlier if value >= earlier else value
        seconds = after.at[target] - before.at[target]
        k = key(labels, by)
        grown[k] = grown.get(k, 0.0) + delta
        rates[k] = rates.get(k, 0.0) + (delta / seconds if seconds > 0 else 0.0)
    return grown, rates


def buckets(
    before: Snapshot | None, after: Snapshot, name: str, by: Sequence[str], **match: str
) -> dict[Key, list[tuple[float, float]]]:
    """A histogram's cumulative buckets per group, ``(le, count)`` by ``le``: counted
    since the processes started (``before`` None) or between the two snapshots."""
    by_le = [*by, "le"]
    counts = (
        total(after, f"{name}_bucket", by_le, **match)
        if before is None
        else increase(before, after, f"{name}_bucket", by_le, **match)[0]
    )
    out: dict[Key, list[tuple[float, float]]] = {}
    for k, count in counts.items():
        out.setdefault(k[:-1], []).append((float(k[-1]), count))
    return {k: sorted(v) for k, v in out.items()}


def quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly inside its bucket as
    Prometheus's histogram_quantile does (the first bucket starts at 0; a quantile in
    the +Inf bucket is the largest finite bound). None when nothing was counted."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in cumulative:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le

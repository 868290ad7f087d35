"""Topics a loop reads in batches: their partitions stay paused and are resumed once
every interval, until a read brings their records (one Kafka fetch for all that came
meanwhile, instead of one per record)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping


class Pacer:
    """When each paced topic is open (its partitions resumed) or closed (paused). A
    closed topic opens ``every_s`` after it closed; an open one closes when a read
    brought records of it, or after ``every_s`` open without any (an idle topic)."""

    def __init__(
        self, every_s: Mapping[str, float], clock: Callable[[], float] = time.monotonic
    ) -> None:
        if any(s <= 0 for s in every_s.values()):
            raise ValueError(f"pacing intervals must be positive: {dict(every_s)}")
        self._every = dict(every_s)
        self._clock = clock
        now = clock()
        self._open_until: dict[str, float | None] = dict.fromkeys(self._every)  # None: closed
        self._next_open: dict[str, float] = {t: now + s for t, s in self._every.items()}

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._every)

    def closed(self) -> frozenset[str]:
        """The paced topics whose partitions should be paused now (after ``turn``)."""
        return frozenset(t for t, until in self._open_until.items() if until is None)

    def turn(self) -> None:
        """Open the closed topics that are due, close the open ones that stayed idle."""
        now = self._clock()
        for topic, until in self._open_until.items():
            if until is None and now >= self._next_open[topic]:
                self._open_until[topic] = now + self._every[topic]
            elif until is not None and now >= until:
                self._close(topic, now)

    def read(self, topics: Iterable[str]) -> None:
        """A read brought records of ``topics``: the open ones among them close."""
        now = self._clock()
        for topic in set(topics) & self._every.keys():
            if self._open_until[topic] is not None:
                self._close(topic, now)

    def until_next_s(self) -> float | None:
        """Seconds until a closed topic opens (None when every paced topic is open)."""
        now = self._clock()
        waits = [self._next_open[t] - now for t in self.closed()]
        return max(0.0, min(waits)) if waits else None

    def _close(self, topic: str, now: float) -> None:
        self._open_until[topic] = None
        self._next_open[topic] = now + self._every[topic]

"""Producers chosen by topic (services.common.kafka.lanes): where each record goes, and
that polling, flushing and the queue length cover every producer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.kafka import Lanes, Outbound


class Stub:
    """Records what a producer was asked to do."""

    def __init__(self, queued: int = 0, reports: int = 0) -> None:
        self.sent: list[str] = []
        self.polls: list[float] = []
        self.flushes: list[float] = []
        self.queued = queued
        self.reports = reports

    def produce(
        self, out: Outbound, on_delivery: Callable[[str | None], None] | None = None
    ) -> None:
        self.sent.append(out.topic)
        self.queued += 1

    def poll(self, timeout_s: float = 0.0) -> int:
        self.polls.append(timeout_s)
        return self.reports

    def flush(self, timeout_s: float) -> int:
        self.flushes.append(timeout_s)
        self.queued = 0
        return 0

    def missing(self, topic: str, partition: int | None, timeout_s: float) -> str | None:
        return f"asked {topic}"

    def __len__(self) -> int:
        return self.queued


def lanes(main: Stub, lane: Stub) -> Lanes:
    stubs: Any = (main, lane)  # the Producer interface, without a client behind it
    return Lanes(stubs[0], {"decisions": stubs[1]})


def test_records_of_a_listed_topic_go_through_its_lane_the_rest_through_the_main_one() -> None:
    main, lane = Stub(), Stub()
    out = lanes(main, lane)
    for topic in ("replies", "decisions", "dead-letters", "decisions"):
        out.produce(Outbound(topic, b"k", b"v"))
    assert main.sent == ["replies", "dead-letters"]
    assert lane.sent == ["decisions", "decisions"]
    assert len(out) == 4
    assert out.missing("decisions", None, 1.0) == "asked decisions"


def test_poll_waits_on_the_main_producer_only_when_the_lanes_had_no_report() -> None:
    main, quiet = Stub(reports=1), Stub(reports=0)
    assert lanes(main, quiet).poll(0.1) == 1
    assert (quiet.polls, main.polls) == ([0.0], [0.1])
    main, busy = Stub(reports=1), Stub(reports=2)
    assert lanes(main, busy).poll(0.1) == 3
    assert main.polls == [0.0]  # reports were served: no wait


def test_flush_covers_every_producer_and_flush_lanes_only_the_lanes() -> None:
    main, lane = Stub(queued=2), Stub(queued=3)
    out = lanes(main, lane)
    assert out.flush_lanes(1.0) == 0
    assert (len(main), len(lane), main.flushes) == (2, 0, [])
    assert out.flush(1.0) == 0
    assert len(out) == 0
    assert all(0.0 <= t <= 1.0 for t in main.flushes + lane.flushes)

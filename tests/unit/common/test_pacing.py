"""services.common.pacing: when a paced topic opens (resumed) and closes (paused)."""

from __future__ import annotations

import pytest

from services.common.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.s = 100.0

    def __call__(self) -> float:
        return self.s


def test_a_paced_topic_opens_once_per_interval_and_closes_when_read() -> None:
    clock = Clock()
    pacer = Pacer({"requests": 0.1}, clock=clock)
    assert pacer.closed() == {"requests"}
    assert pacer.until_next_s() == pytest.approx(0.1)
    clock.s += 0.05
    pacer.turn()
    assert pacer.closed() == {"requests"}
    clock.s += 0.05
    pacer.turn()
    assert pacer.closed() == frozenset()
    assert pacer.until_next_s() is None
    pacer.read(["scores"])  # another topic's records change nothing
    assert pacer.closed() == frozenset()
    clock.s += 0.01
    pacer.read(["scores", "requests"])
    assert pacer.closed() == {"requests"}
    assert pacer.until_next_s() == pytest.approx(0.1)  # counted from the read


def test_an_open_topic_without_records_closes_after_an_interval() -> None:
    clock = Clock()
    pacer = Pacer({"requests": 0.2}, clock=clock)
    clock.s += 0.2
    pacer.turn()
    assert pacer.closed() == frozenset()
    clock.s += 0.19
    pacer.turn()
    assert pacer.closed() == frozenset()
    clock.s += 0.01
    pacer.turn()
    assert pacer.closed() == {"requests"}
    assert pacer.until_next_s() == pytest.approx(0.2)


def test_topics_are_paced_each_on_its_own_and_intervals_must_be_positive() -> None:
    clock = Clock()
    pacer = Pacer({"a": 0.1, "b": 0.3}, clock=clock)
    clock.s += 0.1
    pacer.turn()
    assert pacer.closed() == {"b"}
    assert pacer.until_next_s() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="positive"):
        Pacer({"a": 0.0})

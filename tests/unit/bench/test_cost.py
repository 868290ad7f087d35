"""bench.cost: context switches read from /proc and the per-request division."""

from __future__ import annotations

import math
import os
import threading

from bench.cost import CostMeter, context_switches, idle_cpu, per_request

ROUNDS = 100


def test_context_switches_count_a_thread_that_sleeps_and_wakes() -> None:
    before = context_switches(os.getpid())
    ping, pong = threading.Event(), threading.Event()

    def echo() -> None:
        for _ in range(ROUNDS):
            ping.wait()
            ping.clear()
            pong.set()

    thread = threading.Thread(target=echo)
    thread.start()
    after_start = context_switches(os.getpid())  # the thread exists: its count is read
    for _ in range(ROUNDS):
        ping.set()
        pong.wait()
        pong.clear()
    during = context_switches(os.getpid())
    thread.join()
    assert before > 0
    assert during - after_start >= ROUNDS // 2  # most round trips put a thread to sleep


def test_context_switches_of_a_process_that_is_gone_are_nan() -> None:
    assert math.isnan(context_switches(2**22 + 12345))


def test_per_request_divides_switches_by_the_answers_and_totals_them() -> None:
    cost = per_request(
        {"a": 0.0, "b": 0.0},
        {"a": 10.0, "b": 30.0},
        {},
        {},
        10,
        ({"a": 100.0, "b": 0.0}, {"a": 150.0, "b": 20.0}),
    )
    assert cost["context_switches"] == {"a": 5.0, "b": 2.0, "total": 7.0}
    assert cost["cpu_ms"] == {"a": 1.0, "b": 3.0, "total": 4.0}
    assert "context_switches" not in per_request({"a": 0.0}, {"a": 1.0}, {}, {}, 1)


class Readings(CostMeter):
    """CPU readings from a script instead of /proc."""

    def __init__(self, *readings: dict[str, float]) -> None:
        super().__init__({}, {})
        self.readings = list(readings)

    def cpu(self) -> dict[str, float]:
        return self.readings.pop(0)


def test_idle_cpu_is_per_second_by_process_and_in_total() -> None:
    meter = Readings({"a": 0.0, "b": 10.0}, {"a": 0.5, "b": 12.0})
    assert idle_cpu(meter, 0.01) == {"a": 50.0, "b": 200.0, "total": 250.0}

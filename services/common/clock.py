"""Time. Deadlines cross processes as absolute epoch milliseconds; inside a process,
durations are measured on the monotonic clock. Code that decides by time takes a
clock argument so tests can drive it."""

from __future__ import annotations

import time
from typing import Protocol


def wall_ms() -> float:
    """Epoch milliseconds (comparable across processes and machines)."""
    return time.time() * 1000.0


def mono_ms() -> float:
    """Monotonic milliseconds (only differences mean anything, within this process)."""
    return time.monotonic() * 1000.0


class Clock(Protocol):
    """Something that tells monotonic milliseconds; tests pass a fake."""

    def __call__(self) -> float: ...

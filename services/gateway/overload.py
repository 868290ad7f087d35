"""Load shedding by event-loop lag. When the gateway's CPU is saturated, requests wait
in the event loop before any handler sees them: the in-flight bound cannot see that
queue, but the loop's lag shows it. Past a bound, new requests get 503 at once (cheap)
instead of joining a queue that would make them miss their deadlines."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Gauge

from services.common.clock import mono_ms

DECAY_PER_MS = 0.9 ** (1 / 5)  # a spike fades to a tenth in about 110 ms
LAG = Gauge("rdv_gateway_loop_lag_seconds", "How late the event loop ran its periodic timer")


class LoopLag:
    """Measures how late a periodic timer fires; ``lag_ms`` is a decaying maximum of
    the readings."""

    def __init__(self, interval_ms: float = 20.0) -> None:
        self.interval_ms = interval_ms
        self._decay = DECAY_PER_MS**interval_ms  # per reading
        self.lag_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            due = mono_ms() + self.interval_ms
            await asyncio.sleep(self.interval_ms / 1000.0)
            # a decaying maximum: one late tick counts for about 100 ms, not one reading
            self.lag_ms = max(mono_ms() - due, self.lag_ms * self._decay, 0.0)
            LAG.set(self.lag_ms / 1000.0)

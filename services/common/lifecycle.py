"""Process lifecycle: signals only ask the owner to stop; the owner shuts down cleanly."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("rdv.lifecycle")


def install_stop_signals(stop: Callable[[], None]) -> None:
    """Make SIGTERM and SIGINT call ``stop()`` (which must only set a flag or schedule
    a stop); the process then finishes its current turn, flushes and exits."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

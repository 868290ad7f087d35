"""Process lifecycle: signals only ask the owner to stop; the owner shuts down cleanly."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

log = logging.getLogger("rdv.lifecycle")


def install_stop_signals(stop: Callable[[], None]) -> None:
    """Make SIGTERM and SIGINT call ``stop()`` (which must only set a flag or schedule
    a stop); the process then finishes its current turn, flushes and exits."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` once ``main()`` has shut down cleanly (clients closed,
    outputs flushed): logs and stdio are flushed, and the interpreter's own teardown, which
    takes seconds in a process that imported torch and transformers (it garbage-collects
    every module), is skipped. ``rdv down`` and restarts wait on it otherwise."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)

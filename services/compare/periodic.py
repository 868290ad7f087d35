"""A background thread that runs one step every ``interval_s`` until stopped, outliving a
failed step (the drift monitor's checks, the learner's folds)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("rdv.compare")


class Periodic:
    """``step()`` every ``interval_s`` (first after one interval); ``outcome(ok)`` after
    each, a failed step logged as ``what`` failed."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        step: Callable[[], object],
        outcome: Callable[[bool], None],
        what: str,
    ) -> None:
        self.interval_s = interval_s
        self._step = step
        self._outcome = outcome
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        """The steps still run (for /healthz)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):  # the period, and the stop signal
            try:
                self._step()
            except Exception:  # a failed step must not stop the service
                self._outcome(False)
                log.exception("%s failed", self._what)
            else:
                self._outcome(True)

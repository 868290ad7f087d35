"""Drift as metrics: every ``interval_s``, the canary's and the detectors' outputs of the
last ``window_s`` are compared with the ``reference_s`` before them (services.compare
.signals: PSI and KS), and exported as ``rdv_compare_drift_{psi,ks,alert}{signal}``.
It reads the archive's files in a background thread of the compare process.
"""

from __future__ import annotations

from pathlib import Path

from services.common.archive_files import connect
from services.common.clock import wall_ms
from services.compare import metrics
from services.compare.periodic import Periodic
from services.compare.signals import drift_signals


class DriftMonitor:
    """Recomputes the drift gauges periodically until ``stop``."""

    def __init__(
        self, root: Path, *, interval_s: float, window_s: float, reference_s: float
    ) -> None:
        self.root = root
        self.interval_s = interval_s
        self.window_ms = window_s * 1000.0
        self.reference_ms = reference_s * 1000.0
        self._periodic = Periodic(
            "compare-drift",
            interval_s,
            lambda: self.check(wall_ms()),
            lambda ok: metrics.DRIFT_CHECKS.labels("ok" if ok else "failed").inc(),
            "drift check",
        )

    def check(self, now_ms: float) -> dict[str, float]:
        """Compute and export the drift at ``now_ms``; returns signal -> PSI."""
        if not self.root.is_dir():
            return {}
        current = (now_ms - self.window_ms, now_ms)
        reference = (current[0] - self.reference_ms, current[0])
        con = connect(self.root)
        try:
            found = drift_signals(con, current, reference, source="scores_raw")
        finally:
            con.close()
        for signal, drift in found.items():
            metrics.DRIFT_PSI.labels(signal).set(drift.psi)
            metrics.DRIFT_KS.labels(signal).set(drift.ks)
            metrics.DRIFT_ALERT.labels(signal).set(1.0 if drift.alert else 0.0)
        return {signal: drift.psi for signal, drift in found.items()}

    def start(self) -> DriftMonitor:
        self._periodic.start()
        return self

    def alive(self) -> bool:
        """The periodic check still runs (for /healthz)."""
        return self._periodic.alive()

    def stop(self) -> None:
        self._periodic.stop()

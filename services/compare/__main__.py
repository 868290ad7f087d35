"""``python -m services.compare``: experiments over HTTP (``GET /v1/experiments/compare``,
``rdv compare`` as JSON), the drift monitor (``rdv_compare_drift_*`` on /metrics) and
the learner (the bandit's rewards, written to the control topic: services.compare
.learner), all reading the archive's Parquet files (services.common.archive_files).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for a configuration error (one
line on stderr).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Sequence

from pydantic import ValidationError

from services.common.codec import message_key
from services.common.lifecycle import install_stop_signals
from services.common.logs import configure_logging
from services.common.messages import LearnedEntry
from services.common.ops import OpsServer
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.compare import experiments
from services.compare.learner import Learner
from services.compare.monitor import DriftMonitor
from services.compare.settings import CompareSettings
from services.control.store import publish, read_state

log = logging.getLogger("rdv.compare")
PROG = "python -m services.compare"


def serve(settings: CompareSettings, stop: threading.Event) -> None:
    """The HTTP server and the drift monitor until ``stop`` is set; OSError when the
    port cannot be bound."""
    monitor = DriftMonitor(
        settings.archive_dir,
        interval_s=settings.drift_interval_s,
        window_s=settings.drift_window_s,
        reference_s=settings.drift_reference_s,
    )
    route = experiments.compare_route(settings.archive_dir, settings.policies)
    learner = build_learner(settings)
    ops = OpsServer(
        settings.ops_host,
        settings.ops_port,
        ready=settings.archive_dir.is_dir,
        healthy=lambda: monitor.alive() and (learner is None or learner.alive()),
        routes={experiments.PATH: route},
    )
    monitor.start()
    if learner is not None:
        learner.start()
    ops.start()
    log.info("compare starting", extra={"ops_port": ops.port, "archive": str(settings.archive_dir)})
    try:
        while not stop.wait(1.0):  # the main thread only waits for a stop signal
            pass
    finally:
        ops.close()
        monitor.stop()
        if learner is not None:
            learner.stop()


def build_learner(settings: CompareSettings) -> Learner | None:
    """The learner writing to the control topic of RDV_KAFKA_*; None when it is off."""
    if settings.learn_interval_s <= 0:
        return None
    kafka = KafkaSettings()
    topics = load_topics(prefix=kafka.topic_prefix)

    def versions() -> dict[str, int]:
        return {e: entry.version for e, entry in read_state(kafka, topics).learned.items()}

    def send(entries: list[LearnedEntry]) -> None:
        publish(kafka, topics, [(message_key(e), e) for e in entries])

    return Learner(
        settings.archive_dir, send, interval_s=settings.learn_interval_s, versions=versions
    )


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(
            __doc__ + "\nSettings: RDV_COMPARE_* (archive_dir, policies, drift_interval_s, "
            "drift_window_s, drift_reference_s, learn_interval_s, ops_host, ops_port, nice, "
            "log_level); RDV_KAFKA_* for the learner."
        )
        return 0
    if argv:
        print(f"{PROG}: takes no arguments (settings: RDV_COMPARE_*): {argv}", file=sys.stderr)
        return 2
    try:
        settings = CompareSettings()
    except ValidationError as exc:
        print(f"{PROG}: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging("compare", settings.log_level)
    if settings.nice:
        os.nice(settings.nice)
    stop = threading.Event()
    install_stop_signals(stop.set)
    try:
        serve(settings, stop)
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    log.info("compare stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m services.archive``: record every request, score, decision and feedback as
Parquet files (the decoy), queryable with DuckDB (services.common.archive_files). It only records:
experiments and the drift monitor read those files in their own process
(``python -m services.compare``).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT: every buffer is written and its
offsets committed first), 2 for a configuration error (one line on stderr), 1 when it
fails while running (nothing unwritten is committed; a restart reads it again).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from services.archive.buffer import Limits
from services.archive.service import Archive
from services.archive.settings import ArchiveSettings
from services.archive.store import PartStore
from services.common.codec import decode
from services.common.errors import ConfigError, RendezvousError
from services.common.kafka import (
    Admin,
    Consumer,
    Producer,
    admin_config,
    consumer_config,
    producer_config,
)
from services.common.lifecycle import install_stop_signals
from services.common.logs import configure_logging
from services.common.loop import StreamRunner
from services.common.messages import Decision, Feedback, RequestEnvelope, Score
from services.common.ops import OpsServer
from services.common.settings import KafkaSettings
from services.common.topics import load_topics

log = logging.getLogger("rdv.archive")
PROG = "python -m services.archive"


def build(settings: ArchiveSettings, kafka: KafkaSettings) -> tuple[StreamRunner, Archive]:
    """Topics, store, clients and the loop; raises ConfigError on bad settings."""
    topics = load_topics(settings.topics_file, prefix=kafka.topic_prefix)
    topics.ensure(Admin(admin_config(kafka)))
    try:
        settings.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the archive directory {settings.dir}: {exc}") from exc
    store = PartStore(settings.dir, compression=settings.compression)
    if left := store.remove_temporaries():
        log.info("removed unfinished files of an earlier run", extra={"files": left})
    archive = Archive(
        topics=topics,
        store=store,
        limits=Limits(settings.max_rows, settings.max_bytes, settings.max_age_s * 1000.0),
        retention_hours=settings.retention_hours,
        dedup_window=settings.dedup_window,
    )
    archive.expire()
    consumer = Consumer(
        consumer_config(
            kafka,
            kafka.topic_prefix + settings.group_id,
            "archive",
            {
                "auto.offset.reset": settings.auto_offset_reset,
                "fetch.min.bytes": str(settings.fetch_min_bytes),
                "fetch.wait.max.ms": str(settings.fetch_wait_max_ms),
            },
        )
    )
    runner = StreamRunner(
        service="archive",
        consumer=consumer,
        producer=Producer(producer_config(kafka, "archive")),
        decoders={
            topics.requests: lambda b: decode(b, RequestEnvelope),
            topics.scores: lambda b: decode(b, Score),
            topics.decisions: lambda b: decode(b, Decision),
            topics.feedback: lambda b: decode(b, Feedback),
        },
        processor=archive,
        dead_letter_topic=topics.dead_letters,
        batch_size=settings.batch_size,
        poll_timeout_s=settings.poll_ms / 1000.0,
        flush_timeout_s=settings.flush_timeout_s,
    )
    archive.on_drained = runner.stop
    return runner, archive


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(
            __doc__ + "\nSettings: RDV_ARCHIVE_* (dir, retention_hours, max_rows, max_age_s, "
            "ops_port, ...) and RDV_KAFKA_* (bootstrap, topic_prefix, security)."
        )
        return 0
    try:
        settings, kafka = ArchiveSettings(), KafkaSettings()
    except ValidationError as exc:
        print(f"{PROG}: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging("archive", settings.log_level)
    if settings.nice:
        os.nice(settings.nice)
    try:
        runner, archive = build(settings, kafka)
        ops = OpsServer(
            settings.ops_host,
            settings.ops_port,
            ready=lambda: runner.ready,
            healthy=runner.healthy,
        ).start()
    except (ConfigError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except RendezvousError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    log.info("archive starting", extra={"ops_port": ops.port, "dir": str(settings.dir)})
    install_stop_signals(archive.drain)
    try:
        stats = runner.run()
    except (RendezvousError, OSError) as exc:
        log.error("archive failed", extra={"error": str(exc)})
        return 1
    finally:
        ops.close()
    log.info("archive stopped", extra={"records": stats.records})
    return 0


if __name__ == "__main__":
    sys.exit(main())

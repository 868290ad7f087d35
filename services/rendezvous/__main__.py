"""``python -m services.rendezvous``: answer every request by its deadline and policy.

Exactly one answer across restarts: on each partition assignment the rendezvous reads
back, from the oldest uncommitted request on (not from the restart), the decisions
and the replies already written, and writes only what is missing (readback.py). Kafka
transactions were measured as the alternative (``python -m bench.txn_cost``, on the
2-core development machine): one request per turn took 24 ms at the median instead
of 1 ms (p99 148 ms instead of 13 ms), throughput fell 2.6x to 4.6x and broker CPU per
record rose 3.6x to 6.6x; and an aborted transaction would need the mailbox store
rolled back, a poison return address would abort every answer of its turn, and a
replica killed mid-transaction blocks read_committed readers of the replies until the
transaction times out. Details: docs/benchmarks.md, "Exactly one answer".

Fast failover: replicas form one classic consumer group with a 1.5 s session
(settings.session_timeout_ms; range assignment keeps requests and scores together).
SIGKILL of one of two replicas degraded answers for 1.4 s (6 s sessions: 7.6 s).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for a configuration error (one
line on stderr), 1 when it fails while running.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence

from pydantic import ValidationError

from services.common import tracing
from services.common.codec import decode
from services.common.errors import ConfigError, RendezvousError
from services.common.kafka import (
    Admin,
    Consumer,
    Lanes,
    Producer,
    admin_config,
    consumer_config,
    producer_config,
)
from services.common.lifecycle import install_stop_signals
from services.common.logs import configure_logging
from services.common.loop import StreamRunner
from services.common.messages import RequestEnvelope, Score
from services.common.ops import OpsServer
from services.common.policy import load_policies
from services.common.settings import KafkaSettings
from services.common.topics import Topics, load_topics
from services.rendezvous import metrics
from services.rendezvous.live import follow_control
from services.rendezvous.mailbox import MailboxStore, StoreLimits
from services.rendezvous.readback import ExactlyOnce, Sources, read_back
from services.rendezvous.service import Rendezvous
from services.rendezvous.settings import RendezvousSettings

log = logging.getLogger("rdv.rendezvous")
PROG = "python -m services.rendezvous"


def build(
    settings: RendezvousSettings, kafka: KafkaSettings, producer: Producer | None = None
) -> tuple[StreamRunner, Rendezvous]:
    """Policies, topics, clients and the loop; raises ConfigError on bad settings.
    ``producer``: the one to write with (tests inject faults), default a new one."""
    policies = load_policies(settings.policies)
    topics = load_topics(settings.topics_file, prefix=kafka.topic_prefix)
    if topics.partitions("decisions") != topics.partitions("requests"):
        raise ConfigError(
            "decisions must have as many partitions as requests: a restarted "
            "rendezvous reads back the decisions of the partitions it owns"
        )
    topics.ensure(Admin(admin_config(kafka)))
    client_id = "rendezvous" if settings.instance_id is None else settings.instance_id
    store = MailboxStore(
        StoreLimits(
            max_open=settings.max_open,
            orphan_ttl_ms=settings.orphan_ttl_ms,
            max_open_bytes=settings.max_open_bytes,
            max_orphan_bytes=settings.max_orphan_bytes,
        )
    )
    processor = Rendezvous(policies=policies, topics=topics, store=store)
    once = ExactlyOnce(
        processor, topics.decisions, topics.dead_letters, stall_ms=settings.session_timeout_ms
    )
    outputs = outputs_of(settings, kafka, topics, client_id, producer)
    consumer = Consumer(
        consumer_config(
            kafka, kafka.topic_prefix + settings.group_id, client_id, member_config(settings, kafka)
        ),
        before_revoke=(
            (lambda: outputs.flush_lanes(REVOKE_FLUSH_S)) if isinstance(outputs, Lanes) else None
        ),
    )
    runner = StreamRunner(
        service="rendezvous",
        consumer=consumer,
        producer=outputs,
        decoders={
            topics.requests: lambda b: decode(b, RequestEnvelope),
            topics.scores: lambda b: decode(b, Score),
        },
        processor=once,
        dead_letter_topic=topics.dead_letters,
        batch_size=settings.batch_size,
        until_due=once.until_due_s,
        idle_poll_s=settings.idle_poll_ms / 1000.0,
        flush_timeout_s=settings.flush_timeout_s,
        on_revoke=once.revoked,
        paced=(
            {topics.requests: settings.request_read_interval_ms / 1000.0}
            if settings.request_read_interval_ms
            else None
        ),
        on_assign=lambda fresh: catch_up(kafka, topics, settings, once, fresh=fresh),
    )
    return runner, processor


REVOKE_FLUSH_S = 2.0
"""At most this long in a rebalance to send the decisions a lane still holds (well under
the group session: a member that stalls its rebalance longer is expelled)."""


def outputs_of(
    settings: RendezvousSettings,
    kafka: KafkaSettings,
    topics: Topics,
    client_id: str,
    producer: Producer | None,
) -> Producer | Lanes:
    """The producer the loop writes with: ``producer`` when given (tests inject faults
    into one), else a new one, with the decisions in a lane of their own that lingers
    ``decision_linger_ms`` (none when it is 0)."""
    if producer is not None:
        return producer
    main = Producer(producer_config(kafka, client_id))
    if settings.decision_linger_ms == 0:
        return main
    config = producer_config(kafka, f"{client_id}-decisions")
    lane = Producer(config | {"linger.ms": str(settings.decision_linger_ms)})
    return Lanes(main, {topics.decisions: lane})


def member_config(settings: RendezvousSettings, kafka: KafkaSettings) -> dict[str, str]:
    """The group member's own consumer properties. With group.protocol=consumer
    (KIP-848, in RDV_KAFKA_CLIENT_CONFIG) the broker sets the session and heartbeat."""
    if settings.heartbeat_interval_ms * 3 > settings.session_timeout_ms:
        raise ConfigError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
    conf: dict[str, str] = {"auto.offset.reset": settings.auto_offset_reset}
    if kafka.client_config.get("group.protocol") != "consumer":
        conf["session.timeout.ms"] = str(settings.session_timeout_ms)
        conf["heartbeat.interval.ms"] = str(settings.heartbeat_interval_ms)
    if settings.static_membership:
        if settings.instance_id is None:
            raise ConfigError("static_membership needs an instance_id, unique in the group")
        conf["group.instance.id"] = settings.instance_id
    return conf


def catch_up(
    kafka: KafkaSettings,
    topics: Topics,
    settings: RendezvousSettings,
    once: ExactlyOnce,
    *,
    fresh: frozenset[tuple[str, int]],
) -> None:
    """Read back what the uncommitted requests of newly owned partitions already got
    (services/rendezvous/readback.py): none is answered twice, none is lost."""
    parts = sorted(p for t, p in fresh if t == topics.requests)
    if not parts:
        return
    processor = once.inner
    assert isinstance(processor, Rendezvous)
    src = Sources(
        group=consumer_config(kafka, kafka.topic_prefix + settings.group_id, "rendezvous-catchup"),
        requests=topics.requests,
        decisions=topics.decisions,
    )
    began = time.monotonic()
    todo = read_back(
        src, parts, settings.auto_offset_reset == "earliest", settings.catchup_margin_ms
    )
    processor.mark_decided(sorted(todo.decided))
    once.expect(todo)
    metrics.CATCHUP.inc(len(todo.decided))
    log.info(
        "caught up on decisions",
        extra={
            "partitions": parts,
            "decisions": len(todo.decided),
            "took_ms": round((time.monotonic() - began) * 1000, 1),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(
            __doc__ + "\nSettings: RDV_RENDEZVOUS_* (policies, ops_port, max_open, ...) "
            "and RDV_KAFKA_* (bootstrap, topic_prefix, security)."
        )
        return 0
    try:
        settings, kafka = RendezvousSettings(), KafkaSettings()
    except ValidationError as exc:
        print(f"{PROG}: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging("rendezvous", settings.log_level)
    try:
        tracing.setup("rdv-rendezvous")  # on only with the OTEL_* variables (README, Tracing)
        runner, processor = build(settings, kafka)
        follower = follow_control(kafka, processor).start()  # the policies in force first
        ops = OpsServer(
            settings.ops_host, settings.ops_port, ready=lambda: runner.ready, healthy=runner.healthy
        ).start()
    except (ConfigError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except RendezvousError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    log.info("rendezvous starting", extra={"ops_port": ops.port})
    install_stop_signals(runner.stop)
    try:
        stats = runner.run()
    except RendezvousError as exc:
        log.error("rendezvous failed", extra={"error": str(exc)})
        return 1
    finally:
        ops.close()
        follower.stop()
        tracing.shutdown()
    log.info("rendezvous stopped", extra={"records": stats.records})
    return 0


if __name__ == "__main__":
    sys.exit(main())

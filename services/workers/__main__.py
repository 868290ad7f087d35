"""``python -m services.workers --model SPEC [--model SPEC ...]``: run one model worker
(or several co-hosted models on one consumer) until SIGTERM/SIGINT.

Exit codes: 0 after a clean stop, 2 for a configuration error (one line on stderr),
1 when the worker fails while running (broker gone, model load failed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.common import tracing
from services.common.codec import summarise
from services.common.errors import ConfigError, RendezvousError
from services.common.kafka import Admin, admin_config
from services.common.lifecycle import exit_now, install_stop_signals
from services.common.logs import configure_logging
from services.common.ops import OpsServer
from services.common.runtimes import runtime_names
from services.common.settings import KafkaSettings
from services.common.spec import ModelSpec, load_spec
from services.common.topics import Topics, load_topics
from services.workers.cohost import check_cohosted
from services.workers.runtime import ModelRuntime, create_runtime
from services.workers.service import build_worker
from services.workers.settings import WorkerSettings

log = logging.getLogger("rdv.worker")

PROG = "python -m services.workers"
EPILOG = """\
SPEC is a YAML/JSON file (see models/specs/) or the inline form
  <runtime>:name=<name>,role=<role>,endpoints=<ep>[+<ep>...][,<param>=<value>...]
e.g.
  models/specs/fast.yaml
  echo:name=fast,role=champion,endpoints=demo,latency_ms=2
  latency:name=slow,role=challenger,endpoints=demo,latency_ms=100,slow_share=0.2,slow_ms=900
version=<v>, max_size=<n> and max_wait_ms=<ms> (the micro-batch window) are optional;
every other key is a runtime param. Runtimes: {runtimes}.
Roles: champion, challenger, canary, detector, decoy.

Several --model flags co-host those models in this process: it reads each request
once and every model scores it in turn, with one consumer group for the set. For fast
models (one slow model delays the others); a generative model needs its own process.

Environment: RDV_KAFKA_* (bootstrap, topic_prefix, security) and RDV_WORKER_*
(model, ops_host, ops_port, topics_file, auto_offset_reset, log_level, ...).
Endpoints: /healthz, /readyz (model loaded and partitions assigned), /metrics.
"""


@dataclass(frozen=True)
class Config:
    """Everything main() validated before touching the network."""

    settings: WorkerSettings
    kafka: KafkaSettings
    spec: ModelSpec
    model: ModelRuntime
    topics: Topics
    cohosted: tuple[tuple[ModelSpec, ModelRuntime], ...] = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve one model (or several): score every request of its endpoints "
        "from the requests topic and write the scores to the scores topic.",
        epilog=EPILOG.format(runtimes=", ".join(runtime_names())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        metavar="SPEC",
        action="append",
        help="the model spec (or $RDV_WORKER_MODEL); repeat it to co-host several models "
        "(or $RDV_WORKER_COHOSTED, a JSON list of the others)",
    )
    parser.add_argument("--ops-host", help="ops server interface (default 127.0.0.1)")
    parser.add_argument("--ops-port", type=int, help="ops server port (default 0: a free one)")
    return parser


def configure(args: argparse.Namespace) -> Config:
    """Settings, spec, model object and topics; raises ``ConfigError`` on any problem."""
    first, *others = args.model or [None]
    flags = {"model": first, "ops_host": args.ops_host, "ops_port": args.ops_port}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if others:
        overrides["cohosted"] = others
    try:
        settings, kafka = WorkerSettings(**overrides), KafkaSettings()
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {summarise(exc)}") from None
    except SettingsError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
    if not settings.model:
        raise ConfigError("no model: give --model SPEC or set RDV_WORKER_MODEL")
    specs = [load_spec(text) for text in (settings.model, *settings.cohosted)]
    (spec, model), *cohosted = [(s, create_runtime(s.runtime, s.params)) for s in specs]
    check_cohosted([(spec, model), *cohosted])  # before touching the network
    topics = load_topics(settings.topics_file, prefix=kafka.topic_prefix)
    return Config(settings, kafka, spec, model, topics, tuple(cohosted))


def serve(config: Config) -> int:
    """Ensure topics, start the ops server, load the model, score until stopped."""
    settings, spec = config.settings, config.spec
    for hosted in (spec, *(s for s, _ in config.cohosted)):
        log.info(
            "worker starting",
            extra={
                "model": hosted.name,
                "version": hosted.version,
                "role": hosted.role.value,
                "runtime": hosted.runtime,
                "endpoints": hosted.endpoints,
                "cohosted": bool(config.cohosted),
            },
        )
    config.topics.ensure(Admin(admin_config(config.kafka)), settings.startup_timeout_s)
    tracing.setup(f"rdv-worker-{spec.name}")  # on only with the OTEL_* variables
    service = build_worker(
        kafka=config.kafka,
        settings=settings,
        spec=spec,
        model=config.model,
        topics=config.topics,
        cohosted=config.cohosted,
    )
    try:
        ops = OpsServer(
            settings.ops_host, settings.ops_port, ready=service.ready, healthy=service.healthy
        ).start()
    except OSError as exc:
        service.consumer.close()
        raise ConfigError(
            f"cannot serve ops on {settings.ops_host}:{settings.ops_port}: {exc}"
        ) from None
    log.info("ops server listening", extra={"host": settings.ops_host, "port": ops.port})
    install_stop_signals(service.stop)
    try:
        stats = service.run()
    finally:
        ops.close()
        tracing.shutdown()  # exit_now skips atexit: export the buffered spans here
    log.info("worker stopped", extra={"model": spec.name, "records": stats.records})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = configure(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    configure_logging("worker", config.settings.log_level)
    try:
        return serve(config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except RendezvousError as exc:
        log.error("worker failed", extra={"model": config.spec.name, "error": str(exc)})
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except Exception:
        log.exception("worker failed", extra={"model": config.spec.name})
        return 1


if __name__ == "__main__":
    exit_now(main())  # a worker imported torch: skip the slow interpreter teardown

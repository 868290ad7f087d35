"""``python -m services.gateway``: settings -> clients -> app -> uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from services.common import tracing
from services.common.endpoints import load_endpoints
from services.common.errors import RendezvousError
from services.common.kafka import Admin, admin_config
from services.common.logs import configure_logging
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.control.changes import Control
from services.control.store import KafkaLedger
from services.gateway.app import build_app
from services.gateway.kafka_bus import connect
from services.gateway.live import follow_control
from services.gateway.settings import GatewaySettings

log = logging.getLogger("rdv.gateway")


def main() -> int:
    configure_logging("gateway")
    try:
        settings = GatewaySettings()
        kafka = KafkaSettings()
    except ValidationError as exc:
        log.error("invalid settings", extra={"error": str(exc)})
        return 2
    configure_logging("gateway", settings.log_level)
    try:
        tracing.setup("rdv-gateway")  # on only with the OTEL_* variables (README, Tracing)
        topics = load_topics(settings.topics_file, prefix=kafka.topic_prefix)
        endpoints = load_endpoints(settings.policies)
        topics.ensure(Admin(admin_config(kafka)))
        bus = connect(kafka, topics, settings.reply_partition, settings.reply_poll_ms / 1000.0)
        control = Control(KafkaLedger(kafka, topics), settings.policies)
        app = build_app(settings, bus=bus, topics=topics, endpoints=endpoints, control=control)
        follower = follow_control(kafka, topics, app.state.gateway).start()
    except RendezvousError as exc:
        log.error("cannot start the gateway", extra={"code": exc.code, "error": exc.message})
        return 2
    # uvicorn turns SIGTERM/SIGINT into a graceful stop: in-flight requests finish,
    # then the lifespan stops the reply thread and flushes the producer.
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,  # keep the JSON lines configured above
            access_log=settings.access_log,
        )
    finally:
        follower.stop()
        tracing.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

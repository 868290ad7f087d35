"""``build_app``: the gateway's FastAPI app around an injected bus, with its lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common import tracing
from services.common.endpoints import EndpointSpec, load_endpoints
from services.common.errors import ConfigError
from services.common.messages import ReturnAddress
from services.common.topics import Topics
from services.control.changes import Control
from services.gateway.auth import install_security
from services.gateway.bus import Bus
from services.gateway.errors import install_error_handlers
from services.gateway.openai import completions as openai_completions
from services.gateway.openai import embeddings as openai_embeddings
from services.gateway.openai import routes as openai_routes
from services.gateway.pending import PendingReplies
from services.gateway.routes import control as control_routes
from services.gateway.routes import feedback, health, infer
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings
from services.gateway.tracing import TracingMiddleware

log = logging.getLogger("rdv.gateway")


def build_app(
    settings: GatewaySettings,
    *,
    bus: Bus,
    topics: Topics,
    endpoints: Mapping[str, EndpointSpec] | None = None,
    control: Control | None = None,
) -> FastAPI:
    """The gateway app. ``bus`` carries requests out and replies in (``kafka_bus.connect``
    for Kafka); ``topics`` names the requests topic and the return address; endpoints
    default to the policies at ``settings.policies``. The lifespan starts the bus and,
    at shutdown, stops its reply thread and flushes it within settings.flush_timeout_s.
    ``control`` backs the control API (/v1/control/..., admin key when keys are on);
    without it those routes answer that no control API is configured."""
    if endpoints is None:
        endpoints = load_endpoints(settings.policies)
    replies = topics.partitions("replies")
    if settings.reply_partition >= replies:
        raise ConfigError(
            f"reply_partition {settings.reply_partition} does not exist: {topics.replies} "
            f"has {replies} partitions"
        )
    pending = PendingReplies(max_bytes=settings.max_pending_bytes)
    gateway = Gateway(
        settings,
        bus=bus,
        endpoints=endpoints,
        requests_topic=topics.requests,
        reply_address=ReturnAddress(topic=topics.replies, partition=settings.reply_partition),
        pending=pending,
        feedback_topic=topics.feedback,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pending.bind(asyncio.get_running_loop())
        bus.start(pending.deliver)
        gateway.lag.start()
        log.info(
            "gateway started",
            extra={
                "endpoints": sorted(gateway.endpoints),
                "requests": topics.requests,
                "replies": f"{topics.replies}/{settings.reply_partition}",
            },
        )
        try:
            yield
        finally:
            await gateway.lag.stop()
            await asyncio.to_thread(bus.close, settings.flush_timeout_s)
            pending.cancel_all()
            log.info("gateway stopped")

    app = FastAPI(title="Rendezvous gateway", lifespan=lifespan, openapi_url=None)
    app.state.gateway = gateway
    app.state.control = control
    install_error_handlers(app, settings.retry_after_s)
    install_security(app, settings)  # API keys and rate limits (services/gateway/auth.py)
    if tracing.enabled():  # outermost: refused requests are traced too
        app.add_middleware(TracingMiddleware)
    app.include_router(infer.router)
    app.include_router(openai_routes.router)
    app.include_router(openai_embeddings.router)
    app.include_router(openai_completions.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    app.include_router(control_routes.router)
    return app

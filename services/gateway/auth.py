"""API keys and rate limits at the HTTP edge.

``install_security(app, settings)`` puts ``SecurityMiddleware`` in front of every route
but ``OPEN_PATHS`` (/healthz, /readyz, /metrics: probes and scrapers carry no key):

- keys off (none configured, the local dev profile): every request goes through;
- keys on: a request needs ``Authorization: Bearer <key>`` (what the openai client
  sends) or ``x-api-key: <key>``; none, or an unknown one -> 401 + WWW-Authenticate;
- a rate limit (``rate_limit_per_s``): a token bucket per key (per-key overrides from
  the key file); with keys off, per client IP. Over it -> 429 + Retry-After.

The middleware runs before any body is read, so refused requests cost little. The
request's key (an ``ApiKey``, None with keys off) is ``request.state.api_key``.

``require_admin`` guards the control routes (services/gateway/routes/control.py puts
``dependencies=[AdminOnly]`` on its router; a parameter ``_: RequireAdmin`` does the
same for one route). With keys on it answers 403 unless the key's role is ``admin``;
with keys off everything is open, control routes too (local dev only).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, cast

from fastapi import Depends, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.errors import RendezvousError
from services.gateway.errors import (
    ForbiddenError,
    RateLimitedError,
    UnauthorizedError,
    error_response,
)
from services.gateway.keys import ApiKey, KeyRing, load_keys
from services.gateway.metrics import AUTH_FAILURES, RATE_LIMITED
from services.gateway.ratelimit import RateLimiter
from services.gateway.settings import GatewaySettings

log = logging.getLogger("rdv.gateway")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
API_KEY_HEADER = b"x-api-key"
IP_LABEL = "_ip"  # the rate-limited metric's key label when keys are off


class Security:
    """The keys and the rate limiter: what the middleware and ``require_admin`` share."""

    def __init__(self, keys: KeyRing, limiter: RateLimiter) -> None:
        self.keys = keys
        self.limiter = limiter

    def admit(self, scope: Scope) -> ApiKey | None:
        """The request's key (None with keys off); raises Unauthorized or RateLimited."""
        if not self.keys.enabled:
            client = scope.get("client")
            wait = self.limiter.take(f"ip:{client[0] if client else 'unknown'}")
            if wait:
                RATE_LIMITED.labels(IP_LABEL).inc()
                raise RateLimitedError("too many requests from this address", retry_after_s=wait)
            return None
        key = self.authenticate(scope)
        wait = self.limiter.take(f"key:{key.name}", key.rate_limit_per_s, key.rate_limit_burst)
        if wait:
            RATE_LIMITED.labels(key.name).inc()
            raise RateLimitedError(f"rate limit of API key {key.name} reached", retry_after_s=wait)
        return key

    def authenticate(self, scope: Scope) -> ApiKey:
        presented, reason = presented_key(scope)
        if presented is None:
            AUTH_FAILURES.labels(reason).inc()
            raise UnauthorizedError(
                "an API key is required: send Authorization: Bearer <key> or x-api-key",
                invalid=reason == "malformed",
            )
        key = self.keys.identify(presented)
        if key is None:
            AUTH_FAILURES.labels("invalid").inc()
            raise UnauthorizedError("invalid API key", invalid=True)
        return key


def presented_key(scope: Scope) -> tuple[str | None, str]:
    """The key a request carries (Bearer first, then x-api-key), or None and why."""
    headers = dict(cast(list[tuple[bytes, bytes]], scope.get("headers", [])))
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "malformed"
        return token.strip(), "ok"
    api_key = headers.get(API_KEY_HEADER)
    if api_key is not None and api_key.strip():
        return api_key.decode("latin-1").strip(), "ok"
    return None, "missing"


class SecurityMiddleware:
    """Pure ASGI (no buffering: streamed responses pass through untouched)."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            key = self.security.admit(scope)
        except RendezvousError as exc:
            log.debug("request refused", extra={"code": exc.code, "path": scope["path"]})
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


def install_security(app: FastAPI, settings: GatewaySettings) -> Security:
    """Load the keys, build the limiter, and put the middleware in front of the app."""
    keys = load_keys(settings)
    security = Security(keys, RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst))
    app.state.security = security
    app.add_middleware(cast(Any, SecurityMiddleware), security=security)
    log.info(
        "api keys on" if keys.enabled else "api keys off: the gateway is open",
        extra={
            "keys": [f"{k.name} ({k.role})" for k in keys.keys],
            "rate_limit_per_s": settings.rate_limit_per_s,
            "rate_limit_by": "key" if keys.enabled else "client ip",
        },
    )
    return security


async def require_admin(request: Request) -> None:
    """Route dependency: with keys on, only an ``admin`` key passes (else 403)."""
    security = cast(Security | None, getattr(request.app.state, "security", None))
    if security is None:  # fail closed: a control route on an app without the checks
        raise ForbiddenError("API key checks are not installed on this app")
    if not security.keys.enabled:
        return
    key = cast(ApiKey | None, getattr(request.state, "api_key", None))
    if key is None or key.role != "admin":
        AUTH_FAILURES.labels("forbidden").inc()
        who = "no key" if key is None else f"API key {key.name} (role {key.role})"
        raise ForbiddenError(f"this needs an admin API key; {who} is not one")


AdminOnly = Depends(require_admin)
"""For ``dependencies=[AdminOnly]`` on a route or router."""
RequireAdmin = Annotated[None, AdminOnly]
"""For a route parameter ``_: RequireAdmin``."""

"""The gateway's HTTP span: a plain ASGI middleware, installed only when tracing is on.

Every ``/v1/...`` request gets a server span that continues the client's W3C
``traceparent`` (or starts a trace). The request's ``traceparent`` header is replaced by
the span's own before the routes see it, so the envelope's ``trace_id`` and the
``x-rdv-trace-id`` response header are this trace's id (what to search for in Jaeger),
and the request record's producer span is its child (services/common/tracing.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from services.common import tracing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TRACED_PREFIX = "/v1/"
SERVER_ERROR = 500


class TracingMiddleware:
    """A server span around each ``/v1/...`` HTTP request (other paths pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(TRACED_PREFIX):
            await self.app(scope, receive, send)
            return
        raw: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
        incoming = tuple(
            (k.decode("latin-1"), v) for k, v in raw if k.decode("latin-1") in tracing.TRACE_HEADERS
        )
        method, path = scope.get("method", "GET"), scope["path"]
        status = {"code": 0}
        with trace.use_span(
            tracing.server_span(f"{method} {path}", incoming), end_on_exit=True
        ) as span:
            span.set_attributes({"http.request.method": method, "url.path": path})
            own = tracing.inject(span)
            headers = [(k, v) for k, v in raw if k.decode("latin-1") not in tracing.TRACE_HEADERS]
            headers += [(k.encode("latin-1"), v) for k, v in own]

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = int(message["status"])
                await send(message)

            inner = {**scope, "headers": headers}  # the router writes the route and state here
            try:
                await self.app(inner, receive, sending)
            finally:
                _finish(span, inner, status["code"], method)


def _finish(span: trace.Span, scope: Scope, status: int, method: str) -> None:
    """The attributes known once the route ran: its template, the request id, the status."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    params = scope.get("path_params") or {}
    if "endpoint" in params:
        span.set_attribute("rdv.endpoint", str(params["endpoint"]))
    request_id = (scope.get("state") or {}).get("request_id")
    if request_id:
        span.set_attribute("rdv.request_id", str(request_id))
    if status:
        span.set_attribute("http.response.status_code", status)
    if status >= SERVER_ERROR or not status:
        span.set_status(Status(StatusCode.ERROR, str(status or "no response")))

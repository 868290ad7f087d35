"""The HTTP edge of the error tree: gateway errors, and the ONE function that maps any
error (the platform's tree, HTTP problems, the unexpected) to a status and a JSON body
``{"error": {"code", "message"[, "param"]}}`` (plus ``ood`` when an OOD gate looked at
the request)."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from services.common.errors import (
    CLIENT_ERROR_CODES,
    BackpressureError,
    ConfigError,
    DeliveryError,
    KafkaUnavailableError,
    MessageError,
    RendezvousError,
)
from services.common.messages import OodCheck
from services.gateway.headers import (
    MODEL_HEADER,
    REASON_HEADER,
    REQUEST_ID_HEADER,
    header_value,
    ood_headers,
)

log = logging.getLogger("rdv.gateway")


class UnknownEndpointError(RendezvousError):
    """The URL names an endpoint no policy file defines."""

    code = "unknown_endpoint"


class BodyTooLargeError(RendezvousError):
    """The request body is larger than the gateway accepts."""

    code = "body_too_large"


class UnsupportedMediaTypeError(RendezvousError):
    """The request body is declared as something other than JSON."""

    code = "unsupported_media_type"


class InvalidRequestError(RendezvousError):
    """The body is not JSON, or its fields are missing, unknown or of the wrong type."""

    code = "invalid_request"


class UnsupportedFeatureError(RendezvousError):
    """A valid request for something this gateway does not do (yet), e.g. ``n > 1``
    chat choices; ``param`` names the request parameter, as OpenAI's errors do."""

    code = "unsupported"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class OverloadedError(RendezvousError):
    """Too many requests are waiting for replies already: shed load."""

    code = "overloaded"


class UnauthorizedError(RendezvousError):
    """API keys are on and the request has none, or one the gateway does not know.
    ``challenge`` is the ``WWW-Authenticate`` value (RFC 6750)."""

    code = "unauthorized"

    def __init__(self, message: str, *, invalid: bool) -> None:
        super().__init__(message)
        self.challenge = 'Bearer realm="rendezvous"' + (
            ', error="invalid_token"' if invalid else ""
        )


class ForbiddenError(RendezvousError):
    """A known API key whose role may not do this (e.g. a client key on an admin route)."""

    code = "forbidden"


class RateLimitedError(RendezvousError):
    """The API key (or client IP) spent its rate limit; retry after ``retry_after_s``."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


class NoAnswerError(RendezvousError):
    """No reply reached the gateway by the request's deadline (plus the grace)."""

    code = "no_answer"


class ReplyError(RendezvousError):
    """The rendezvous answered with an error; its code is kept as given."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        model: str | None,
        reason: str,
        ood: OodCheck | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.model = model
        self.reason = reason
        self.ood = ood


DEADLINE_EXCEEDED = "deadline_exceeded"
_REPLY_STATUS = {  # the rendezvous's error codes; any other is a 502
    DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    "overloaded": HTTPStatus.SERVICE_UNAVAILABLE,  # its mailboxes are full: retry later
    "unknown_endpoint": HTTPStatus.NOT_FOUND,  # the gateway knows it, the rendezvous not
    # the models refused the input itself (e.g. a prompt longer than the context window)
    **dict.fromkeys(CLIENT_ERROR_CODES, HTTPStatus.BAD_REQUEST),
    "invalid_request": HTTPStatus.UNPROCESSABLE_ENTITY,  # as the gateway's own check says
}
_KNOWN = frozenset(s.value for s in HTTPStatus)

_STATUS: tuple[tuple[type[RendezvousError], HTTPStatus], ...] = (
    (UnauthorizedError, HTTPStatus.UNAUTHORIZED),
    (ForbiddenError, HTTPStatus.FORBIDDEN),
    (RateLimitedError, HTTPStatus.TOO_MANY_REQUESTS),
    (UnknownEndpointError, HTTPStatus.NOT_FOUND),
    (BodyTooLargeError, HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
    (UnsupportedMediaTypeError, HTTPStatus.UNSUPPORTED_MEDIA_TYPE),
    (InvalidRequestError, HTTPStatus.UNPROCESSABLE_ENTITY),
    (UnsupportedFeatureError, HTTPStatus.BAD_REQUEST),
    (OverloadedError, HTTPStatus.SERVICE_UNAVAILABLE),
    (KafkaUnavailableError, HTTPStatus.SERVICE_UNAVAILABLE),
    (BackpressureError, HTTPStatus.SERVICE_UNAVAILABLE),
    (DeliveryError, HTTPStatus.SERVICE_UNAVAILABLE),
    (NoAnswerError, HTTPStatus.GATEWAY_TIMEOUT),
    (MessageError, HTTPStatus.BAD_GATEWAY),
    (ConfigError, HTTPStatus.INTERNAL_SERVER_ERROR),
)


def error_response(
    exc: Exception, *, request_id: str | None = None, retry_after_s: int = 1
) -> JSONResponse:
    """Status + ``{"error": {"code", "message"}}`` for any exception; 503s and 429s carry
    Retry-After, 401s WWW-Authenticate, and the request id header once the gateway has
    stamped one."""
    status, body = error_body(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        headers["Retry-After"] = str(retry_after_s)
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = exc.challenge
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    if isinstance(exc, ReplyError):
        headers[REASON_HEADER] = header_value(exc.reason)
        if exc.model is not None:
            headers[MODEL_HEADER] = header_value(exc.model)
        headers.update(ood_headers(exc.ood))
    return JSONResponse(body, status_code=int(status), headers=headers)


def error_body(exc: Exception) -> tuple[HTTPStatus, dict[str, object]]:
    """The status and JSON body ``error_response`` gives ``exc`` (also what a streamed
    completion's ``error`` event carries)."""
    status, code, message = _classify(exc)
    error: dict[str, object] = {"code": code, "message": message}
    if isinstance(exc, UnsupportedFeatureError) and exc.param is not None:
        error["param"] = exc.param
    body: dict[str, object] = {"error": error}
    if isinstance(exc, ReplyError) and exc.ood is not None:
        body["ood"] = exc.ood.model_dump()
    return status, body


def _classify(exc: Exception) -> tuple[HTTPStatus, str, str]:
    if isinstance(exc, ReplyError):
        return _REPLY_STATUS.get(exc.code, HTTPStatus.BAD_GATEWAY), exc.code, exc.message
    if isinstance(exc, RendezvousError):
        for cls, status in _STATUS:
            if isinstance(exc, cls):
                return status, exc.code, exc.message
        return HTTPStatus.INTERNAL_SERVER_ERROR, exc.code, exc.message
    if isinstance(exc, RequestValidationError):
        problems = "; ".join(str(e.get("msg", "")) for e in list(exc.errors())[:3])
        return HTTPStatus.UNPROCESSABLE_ENTITY, InvalidRequestError.code, problems or "invalid"
    if isinstance(exc, HTTPException) and exc.status_code in _KNOWN:
        status = HTTPStatus(exc.status_code)
        return status, status.phrase.lower().replace(" ", "_").replace("-", "_"), str(exc.detail)
    log.error("unexpected error", exc_info=exc)
    return HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "internal error (see the logs)"


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Route every error FastAPI/Starlette handles outside the routes through
    ``error_response`` (unknown paths, wrong methods, validation, the unexpected)."""

    async def handle(request: Request, exc: Exception) -> Response:
        request_id = getattr(request.state, "request_id", None)
        return error_response(exc, request_id=request_id, retry_after_s=retry_after_s)

    for exc_type in (RendezvousError, HTTPException, RequestValidationError, Exception):
        app.add_exception_handler(exc_type, handle)

"""``/v1/control/...``: the control API (admin key whenever API keys are on).

The changes ``rdv`` makes, checked where they are made: each route runs the same
``services.control.changes.Control`` the CLI's ``--direct`` path runs, against the
control topic, so a client key cannot change a policy however it asks.

- ``GET  /v1/control/models``: the registered models;
- ``POST /v1/control/deploy`` ``{"spec": {...}, "role": ...}``: register a model (its
  worker is started by the deployer ``rdv deploy`` runs, not by the gateway);
- ``POST /v1/control/promote`` ``{"model": ..., "endpoints": [...]}``;
- ``POST /v1/control/retire`` ``{"model": ...}`` (stopping the worker: the deployer);
- ``GET  /v1/control/policies/{endpoint}``: the policy in force and its history;
- ``PUT  /v1/control/policies/{endpoint}`` ``{"policy": {...}}``: a new version;
- ``POST /v1/control/policies/{endpoint}/rollback``: the previous version again.

Every body may carry ``"by"`` (who asks); with keys on, the key's name is recorded too.
Refusals are ``{"error": {"code", "message"}}``: 400 (invalid change), 401 (no or an
unknown key), 403 (not an admin key), 404 (unknown model or endpoint), 409 (cannot
apply now, e.g. promote the champion), 503 (Kafka did not answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from services.common.errors import ConfigError, RendezvousError
from services.common.messages import Name, Role
from services.common.spec import ModelSpec
from services.control.changes import PolicyChange
from services.control.errors import ControlConflictError, ControlNotFoundError
from services.gateway.auth import AdminOnly
from services.gateway.deps import ControlDep, GatewayDep
from services.gateway.errors import InvalidRequestError, error_response
from services.gateway.keys import ApiKey
from services.gateway.routes.infer import check_media_type, read_body
from services.gateway.schemas import describe

log = logging.getLogger("rdv.gateway")
router = APIRouter(prefix="/v1/control", dependencies=[AdminOnly])

CONTROL_REQUESTS = Counter(
    "rdv_gateway_control_requests_total",
    "Control API requests that reached a route, by action and HTTP status.",
    ["action", "status"],
)

B = TypeVar("B", bound=BaseModel)
Who = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    by: Who | None = None
    """Who asks (free text); with keys on the key's name is recorded beside it."""


class DeployRequest(_Body):
    spec: dict[str, JsonValue]
    """A model spec as a mapping (models/specs/*.yaml's fields)."""
    role: Role | None = None
    """The role to register it with instead of the spec's."""


class PromoteRequest(_Body):
    model: Name
    endpoints: list[Name] | None = Field(default=None, min_length=1)
    """Default: every endpoint the model is registered for."""


class RetireRequest(_Body):
    model: Name


class PolicyRequest(_Body):
    policy: dict[str, JsonValue]
    """The policy document (deploy/policies/*.yaml's format) naming the endpoint."""

    evidence: dict[str, JsonValue] | None = None
    """Why the policy changed (``rdv canary watch``'s test results), kept in the entry."""


_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (ControlNotFoundError, 404),
    (ControlConflictError, 409),
    (ConfigError, 400),
    (InvalidRequestError, 400),
)


@router.get("/models")
async def models(request: Request, control: ControlDep) -> Response:
    async def work() -> dict[str, Any]:
        regs = await asyncio.to_thread(control.models)
        return {"models": [r.model_dump(mode="json") for r in regs]}

    return await _run("models", request, work)


@router.post("/deploy")
async def deploy(request: Request, control: ControlDep, gateway: GatewayDep) -> Response:
    async def work() -> dict[str, Any]:
        body = await _parse(request, gateway.settings.max_body_bytes, DeployRequest)
        spec = _spec(body)
        reg = await asyncio.to_thread(control.deploy, spec, _who(request, body))
        return {"model": reg.model_dump(mode="json")}

    return await _run("deploy", request, work, status=201)


@router.post("/promote")
async def promote(request: Request, control: ControlDep, gateway: GatewayDep) -> Response:
    async def work() -> dict[str, Any]:
        body = await _parse(request, gateway.settings.max_body_bytes, PromoteRequest)
        who = _who(request, body)
        changes = await asyncio.to_thread(control.promote, body.model, body.endpoints, who)
        return {"model": body.model, "changes": _changes(changes)}

    return await _run("promote", request, work)


@router.post("/retire")
async def retire(request: Request, control: ControlDep, gateway: GatewayDep) -> Response:
    async def work() -> dict[str, Any]:
        body = await _parse(request, gateway.settings.max_body_bytes, RetireRequest)
        changes = await asyncio.to_thread(control.retire, body.model, _who(request, body))
        return {"model": body.model, "changes": _changes(changes), "unregistered": True}

    return await _run("retire", request, work)


@router.get("/policies/{endpoint}")
async def show_policy(endpoint: str, request: Request, control: ControlDep) -> Response:
    async def work() -> dict[str, Any]:
        return (await asyncio.to_thread(control.show, endpoint)).to_json()

    return await _run("show", request, work)


@router.put("/policies/{endpoint}")
async def set_policy(
    endpoint: str, request: Request, control: ControlDep, gateway: GatewayDep
) -> Response:
    async def work() -> dict[str, Any]:
        body = await _parse(request, gateway.settings.max_body_bytes, PolicyRequest)
        who = _who(request, body)
        change = await asyncio.to_thread(
            control.set_policy, endpoint, body.policy, who, body.evidence
        )
        return asdict(change)

    return await _run("set", request, work)


@router.post("/policies/{endpoint}/rollback")
async def rollback(
    endpoint: str, request: Request, control: ControlDep, gateway: GatewayDep
) -> Response:
    async def work() -> dict[str, Any]:
        body = await _parse(request, gateway.settings.max_body_bytes, _Body, empty_ok=True)
        change = await asyncio.to_thread(control.rollback, endpoint, _who(request, body))
        return asdict(change)

    return await _run("rollback", request, work)


# -- plumbing -------------------------------------------------------------------------


async def _run(
    action: str,
    request: Request,
    work: Callable[[], Any],
    status: int = 200,
) -> Response:
    """Run the route's work; map refusals to their status; count and log the outcome."""
    try:
        response: Response = JSONResponse(await work(), status_code=status)
    except RendezvousError as exc:
        response = refusal(exc)
    CONTROL_REQUESTS.labels(action, str(response.status_code)).inc()
    key = getattr(request.state, "api_key", None)
    log.info(
        "control request",
        extra={
            "action": action,
            "path": request.url.path,
            "status": response.status_code,
            "key": key.name if isinstance(key, ApiKey) else None,
        },
    )
    return response


def refusal(exc: RendezvousError) -> JSONResponse:
    """A control refusal as status + ``{"error": {"code", "message"}}``."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            code = exc.code if cls is not ConfigError else InvalidRequestError.code
            body = {"error": {"code": code, "message": exc.message}}
            return JSONResponse(body, status_code=status)
    return error_response(exc)  # 413, 415, 503 (Kafka), as on every route


async def _parse(request: Request, limit: int, model: type[B], *, empty_ok: bool = False) -> B:
    check_media_type(request.headers.get("content-type"))
    raw = await read_body(request, limit)
    if not raw.strip():
        if empty_ok:
            return model.model_validate({})
        raise InvalidRequestError("empty body: send a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequestError(describe(exc)) from None


def _spec(body: DeployRequest) -> ModelSpec:
    data = dict(body.spec) | ({"role": body.role.value} if body.role else {})
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(f"invalid model spec: {describe(exc)}") from None


def _who(request: Request, body: _Body) -> str:
    """Who made the change: the body's ``by`` and, with keys on, the key's name."""
    key = getattr(request.state, "api_key", None)
    if not isinstance(key, ApiKey):
        return body.by or "anonymous"
    return key.name if body.by in (None, key.name) else f"{body.by} (key {key.name})"


def _changes(changes: list[PolicyChange]) -> list[dict[str, Any]]:
    return [asdict(c) for c in changes]

"""``/healthz`` (the process is up), ``/readyz`` (it can serve), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.common.errors import KafkaUnavailableError
from services.gateway.deps import GatewayDep
from services.gateway.errors import error_response

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(gateway: GatewayDep) -> Response:
    if gateway.ready():
        return JSONResponse({"status": "ready"})
    exc = KafkaUnavailableError("not ready: the reply partition is not positioned or Kafka is down")
    return error_response(exc, retry_after_s=gateway.settings.retry_after_s)


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

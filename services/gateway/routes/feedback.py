"""``POST /v1/feedback``: a client's judgement of an answer, recorded for comparisons.

Body ``{"request_id": "...", "reward": 1.0, "label": "thumbs_up"}``; 202 once Kafka
has the record (the archive stores it; ``rdv compare`` joins it with the decisions).
The request id is not checked against past requests here: the gateway keeps no
history, and feedback for an unknown id simply never joins a decision.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.common.errors import RendezvousError
from services.gateway.deps import GatewayDep
from services.gateway.errors import InvalidRequestError, error_response
from services.gateway.metrics import FEEDBACK
from services.gateway.routes.infer import check_media_type, read_body
from services.gateway.schemas import FeedbackRequest, describe

router = APIRouter()


@router.post("/v1/feedback")
async def feedback(request: Request, gateway: GatewayDep) -> Response:
    try:
        check_media_type(request.headers.get("content-type"))
        body = await read_body(request, gateway.settings.max_body_bytes)
        if not body:
            raise InvalidRequestError('empty body: send {"request_id": ..., "reward": ...}')
        try:
            req = FeedbackRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequestError(describe(exc)) from None
        msg = await gateway.feedback(req)
        response: Response = JSONResponse(
            {"request_id": msg.request_id, "reward": msg.reward, "status": "accepted"},
            status_code=202,
        )
    except RendezvousError as exc:
        response = error_response(exc, retry_after_s=gateway.settings.retry_after_s)
    FEEDBACK.labels(str(response.status_code)).inc()
    return response

"""The one list of client error codes (services.common.errors.CLIENT_ERROR_CODES): the
codes models raise for input at fault are in it, and the gateway answers each with 4xx."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from services.common.errors import CLIENT_ERROR_CODES
from services.gateway.errors import ReplyError, error_body


def _family(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _family(direct))]


def test_every_client_code_the_llama_model_raises_is_in_the_shared_list() -> None:
    errors = pytest.importorskip("models.llama.errors")  # models/ may not import services/
    client = {cls.code for cls in _family(errors.InvalidRequestError)}
    assert client == {"invalid_request", "prompt_too_long", "request_too_large"}
    assert client <= CLIENT_ERROR_CODES
    others = {cls.code for cls in _family(errors.LlamaError)} - client
    assert others, "the model's own failures"
    assert not others & CLIENT_ERROR_CODES


@pytest.mark.parametrize("code", sorted(CLIENT_ERROR_CODES))
def test_the_gateway_answers_every_client_code_with_a_4xx(code: str) -> None:
    status, body = error_body(ReplyError(code, "refused", model=None, reason="all_failed"))
    assert 400 <= status < 500
    assert body == {"error": {"code": code, "message": "refused"}}


def test_the_gateway_keeps_its_statuses_for_client_codes() -> None:
    def status(code: str) -> HTTPStatus:
        return error_body(ReplyError(code, "m", model=None, reason="all_failed"))[0]

    assert status("prompt_too_long") == HTTPStatus.BAD_REQUEST
    assert status("request_too_large") == HTTPStatus.BAD_REQUEST
    assert status("invalid_request") == HTTPStatus.UNPROCESSABLE_ENTITY
    assert status("model_error") == HTTPStatus.BAD_GATEWAY

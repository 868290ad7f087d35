"""The OOD gate's finding reaches the client: an ``ood`` body field and an ``x-rdv-ood``
header on /v1/infer, on chat completions and on error answers; absent without a gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.chat import ChatOutput, ChatUsage
from services.common.codec import encode
from services.common.messages import ErrorBody, OodCheck, Reply, RequestEnvelope
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, running
from tests.unit.gateway.test_openai import USER

FLAGGED = OodCheck(status="flagged", detector="ood", score=9.5)
SAFE = ChatOutput(
    text="I can help with banking and travel.",
    finish_reason="stop",
    usage=ChatUsage(prompt_tokens=0, completion_tokens=0),
)


def _reply(
    env: RequestEnvelope,
    *,
    ood: OodCheck | None,
    output: object = "safe",
    error: ErrorBody | None = None,
) -> bytes:
    return encode(
        Reply(
            request_id=env.request_id,
            model=None,
            reason="ood_safe_reply" if error is None else "all_failed",
            output=None if error else output,
            error=error,
            decided_ms=1.0,
            ood=ood,
        )
    )


@pytest.fixture
def chat_client(
    chat_settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> Iterator[httpx.Client]:
    with running(build_app(chat_settings, bus=bus, topics=topics)) as c:
        yield c


def test_infer_says_the_input_was_flagged(client: httpx.Client, bus: FakeBus) -> None:
    bus.responder = lambda env: [_reply(env, ood=FLAGGED)]
    resp = client.post("/v1/infer/demo", json={"inputs": "what is my horoscope?"})
    assert resp.status_code == 200
    assert resp.headers["x-rdv-ood"] == "flagged"
    assert resp.headers["x-rdv-reason"] == "ood_safe_reply"
    assert resp.json()["ood"] == {"status": "flagged", "detector": "ood", "score": 9.5}
    assert resp.json()["output"] == "safe"


def test_without_a_gate_there_is_no_flag(client: httpx.Client, bus: FakeBus) -> None:
    bus.responder = lambda env: [_reply(env, ood=None)]
    resp = client.post("/v1/infer/demo", json={"inputs": 1})
    assert resp.status_code == 200
    assert "x-rdv-ood" not in resp.headers
    assert resp.json()["ood"] is None


def test_chat_completions_carry_the_flag(chat_client: httpx.Client, bus: FakeBus) -> None:
    bus.responder = lambda env: [_reply(env, ood=FLAGGED, output=SAFE.model_dump())]
    resp = chat_client.post("/v1/chat/completions", json={"model": "chat", "messages": USER})
    assert resp.status_code == 200
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == SAFE.text
    assert body["ood"]["status"] == "flagged"
    assert resp.headers["x-rdv-ood"] == "flagged"


def test_an_error_answer_still_says_what_the_gate_found(client: httpx.Client, bus: FakeBus) -> None:
    unknown = OodCheck(status="unknown", detector="ood")
    error = ErrorBody(code="all_failed", message="every model failed")
    bus.responder = lambda env: [_reply(env, ood=unknown, error=error)]
    resp = client.post("/v1/infer/demo", json={"inputs": 1})
    assert resp.status_code == 502
    assert resp.headers["x-rdv-ood"] == "unknown"
    assert resp.json() == {
        "error": {"code": "all_failed", "message": "every model failed"},
        "ood": {"status": "unknown", "detector": "ood", "score": None},
    }


def test_the_detector_is_not_listed_as_a_chat_model(tmp_path: Path, topics: Topics) -> None:
    policies = tmp_path / "gated"
    policies.mkdir()
    (policies / "chat.yaml").write_text(
        "endpoint: chat\ndeadline_ms: 5000\nmodels: [smol, ood]\n"
        "stages: [{until_ms: deadline, accept: [smol]}]\n"
        "ood: {detector: ood, wait_ms: 100, when_flagged: {output: no}}\n"
    )
    settings = GatewaySettings(policies=policies, max_loop_lag_ms=60_000)
    with running(build_app(settings, bus=FakeBus(), topics=topics)) as c:
        listed = [m["id"] for m in c.get("/v1/models").json()["data"]]
        asked = c.post("/v1/chat/completions", json={"model": "ood", "messages": USER})
    assert listed == ["chat", "smol"]
    assert asked.status_code == 404

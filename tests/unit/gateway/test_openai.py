"""The OpenAI-compatible chat API over an in-memory bus, driven by the official
``openai`` client (what users run), plus the errors a chat request can meet."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from services.common.chat import ChatOutput, ChatPayload, ChatUsage
from services.common.messages import RequestEnvelope
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, failed, ok

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def api(
    chat_settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> Iterator[tuple[openai.OpenAI, str]]:
    with serving(build_app(chat_settings, bus=bus, topics=topics)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        yield client, url
        client.close()


def answer(text: str, finish: str = "stop", model: str = "smol"):  # type: ignore[no-untyped-def]
    def respond(env: RequestEnvelope) -> list[bytes]:
        out = ChatOutput(
            text=text,
            finish_reason=finish,  # type: ignore[arg-type]
            usage=ChatUsage(prompt_tokens=11, completion_tokens=3),
        )
        return [ok(env, output=out.model_dump(), model=model)]

    return respond


def test_the_openai_client_round_trips(api: tuple[openai.OpenAI, str], bus: FakeBus) -> None:
    client, _ = api
    bus.responder = answer("Paris is the capital.")

    resp = client.chat.completions.create(
        model="chat",
        messages=USER,
        temperature=0,  # type: ignore[arg-type]
        max_tokens=8,
        seed=3,
        user="u42",
    )

    assert resp.choices[0].message.content == "Paris is the capital."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "smol"  # which model answered
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (11, 3)
    [env] = bus.envelopes()
    payload = ChatPayload.model_validate(env.payload)
    assert (payload.max_tokens, payload.temperature, payload.seed) == (8, 0.0, 3)
    assert payload.messages[0].content == USER[0]["content"]
    assert env.endpoint == "chat"
    assert env.attributes == {"user": "u42"}


def test_a_roster_model_name_reaches_its_endpoint(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = api
    bus.responder = answer("ok", model="smol-tight")
    resp = client.chat.completions.create(model="smol-tight", messages=USER)  # type: ignore[arg-type]
    assert resp.model == "smol-tight"
    assert bus.envelopes()[0].endpoint == "chat"


def test_models_lists_endpoints_and_rosters(api: tuple[openai.OpenAI, str]) -> None:
    client, _ = api
    assert [m.id for m in client.models.list()] == ["chat", "smol", "smol-tight"]


def test_a_deadline_cut_is_length_with_the_reason_in_a_header(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = api
    bus.responder = answer("Par", finish="deadline")
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "chat", "messages": USER})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["finish_reason"] == "length"
    assert resp.headers["x-rdv-finish-reason"] == "deadline"
    assert resp.headers["x-rdv-model"] == "smol"


@pytest.mark.parametrize(
    ("kwargs", "error", "status"),
    [
        ({"n": 2}, openai.BadRequestError, 400),
        ({"temperature": 7}, openai.UnprocessableEntityError, 422),
        ({"max_tokens": 0}, openai.UnprocessableEntityError, 422),
        ({"model": "gpt-nothing"}, openai.NotFoundError, 404),
    ],
)
def test_bad_parameters_are_clear_4xx_and_nothing_is_produced(
    api: tuple[openai.OpenAI, str],
    bus: FakeBus,
    kwargs: dict[str, object],
    error: type[openai.APIStatusError],
    status: int,
) -> None:
    client, _ = api
    args: dict[str, object] = {"model": "chat", "messages": USER, **kwargs}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**args)  # type: ignore[call-overload]
    assert caught.value.status_code == status
    assert bus.envelopes() == []


def test_a_prompt_longer_than_the_context_is_400(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = api
    bus.responder = lambda env: [failed(env, "prompt_too_long")]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat", messages=USER)  # type: ignore[arg-type]
    assert "prompt_too_long" in str(caught.value)


def test_an_answer_that_is_not_a_chat_completion_is_502(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = api
    bus.responder = lambda env: [ok(env, output={"not": "chat"})]
    resp = httpx.post(f"{url}/v1/chat/completions", json={"model": "chat", "messages": USER})
    assert resp.status_code == 502


def test_a_deadline_header_shortens_the_request_deadline(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = api
    bus.responder = answer("ok")
    body = {"model": "chat", "messages": USER}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-rdv-deadline-ms": "800"})
    assert resp.status_code == 200
    [env] = bus.envelopes()
    assert env.deadline_epoch_ms - env.created_ms == 800
    bad = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-rdv-deadline-ms": "soon"})
    assert bad.status_code == 422
    assert len(bus.envelopes()) == 1


@pytest.mark.parametrize(
    "value", [b"soon", b"0", b"\xb2", b"9" * 5000], ids=["word", "zero", "superscript", "huge"]
)
def test_a_bad_deadline_header_is_422(
    api: tuple[openai.OpenAI, str], bus: FakeBus, value: bytes
) -> None:
    """Headers arrive latin-1 decoded: b"\\xb2" is "²", which ``str.isdigit`` takes."""
    _, url = api
    body = {"model": "chat", "messages": USER}
    resp = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"x-rdv-deadline-ms": value})
    assert resp.status_code == 422
    assert "x-rdv-deadline-ms" in resp.json()["error"]["message"]
    assert bus.envelopes() == []

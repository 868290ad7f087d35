"""OpenAI's legacy ``POST /v1/completions`` over the in-memory bus, with the official
``openai`` client: the raw prompt reaches the chat model as a prompt payload (no
conversation), the answer comes back as a text completion, and the legacy extras that
are not served are refused by name."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from services.common.chat import ChatPayload
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, assert_refused
from tests.unit.gateway.test_openai_stream import reply, script


@pytest.fixture
def served(
    chat_settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> Iterator[tuple[openai.OpenAI, str]]:
    bus.responder = script(reply(" there was a lighthouse.", finish="length"))
    with serving(build_app(chat_settings, bus=bus, topics=topics)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
        yield client, url
        client.close()


def test_the_openai_client_gets_the_continuation(
    served: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = served
    answer = client.completions.create(model="chat", prompt="Once upon a time", temperature=0)
    assert answer.object == "text_completion"
    assert answer.choices[0].text == " there was a lighthouse."
    assert answer.choices[0].finish_reason == "length"
    assert answer.model == "smol"
    assert answer.usage is not None
    assert answer.usage.total_tokens == 15
    [env] = bus.envelopes()
    payload = ChatPayload.model_validate(env.payload)
    assert (payload.prompt, payload.messages, payload.max_tokens) == ("Once upon a time", None, 16)
    assert "messages" not in env.payload  # type: ignore[operator]


def test_a_list_of_one_prompt_is_that_prompt(
    served: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = served
    resp = httpx.post(f"{url}/v1/completions", json={"model": "smol", "prompt": ["Hi"]})
    assert resp.status_code == 200, resp.text
    assert ChatPayload.model_validate(bus.envelopes()[0].payload).prompt == "Hi"


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"echo": True}, 400, "echo"),
        ({"suffix": "end"}, 400, "suffix"),
        ({"best_of": 3}, 400, "best_of"),
        ({"logprobs": 2}, 400, "logprobs"),
        ({"stream": True}, 400, "stream"),
        ({"n": 2}, 400, "n"),
        ({"no_such": 1}, 400, "no_such"),
        ({"prompt": ["a", "b"]}, 400, "prompt"),
        ({"prompt": [1, 2, 3]}, 400, "prompt"),
        ({"prompt": ""}, 422, None),
        ({"prompt": {"text": "x"}}, 422, None),
        ({"max_tokens": 0}, 422, None),
    ],
)
def test_what_is_not_served_is_refused_and_nothing_is_produced(
    served: tuple[openai.OpenAI, str],
    bus: FakeBus,
    fields: dict[str, object],
    status: int,
    param: str | None,
) -> None:
    _, url = served
    body = {"model": "chat", "prompt": "Hello", **fields}
    resp = httpx.post(f"{url}/v1/completions", json=body)
    assert_refused(resp, bus, status, param)


def test_neutral_legacy_values_pass(served: tuple[openai.OpenAI, str]) -> None:
    _, url = served
    body = {"model": "chat", "prompt": "Hello", "echo": False, "best_of": 1, "stream": False}
    assert httpx.post(f"{url}/v1/completions", json=body).status_code == 200

"""Every OpenAI chat parameter is honoured or refused with a 400 naming it: the
penalties and logprobs reach the model and come back, the rest pass only at the value
that asks for nothing, unknown ones are refused, and messages take OpenAI's shapes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from services.common.chat import ChatOutput, ChatPayload, ChatUsage, TokenLogprob, TopLogprob
from services.common.messages import RequestEnvelope
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, ok, running

USER = [{"role": "user", "content": "Hello"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.fixture
def http(chat_settings: GatewaySettings, bus: FakeBus, topics: Topics) -> Iterator[httpx.Client]:
    with running(build_app(chat_settings, bus=bus, topics=topics)) as client:
        yield client


def post(http: httpx.Client, **fields: object) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": "chat", "messages": USER, **fields})


def payload(bus: FakeBus) -> ChatPayload:
    [env] = bus.envelopes()
    return ChatPayload.model_validate(env.payload)


def chat_answer(env: RequestEnvelope, logprobs: list[TokenLogprob] | None = None) -> list[bytes]:
    out = ChatOutput(
        text="Hi!",
        finish_reason="stop",
        usage=ChatUsage(prompt_tokens=4, completion_tokens=2),
        logprobs=logprobs,
    )
    return [ok(env, output=out.model_dump(), model="smol")]


@pytest.fixture(autouse=True)
def answers(bus: FakeBus) -> None:
    bus.responder = chat_answer


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("functions", [TOOL["function"]]),
        ("function_call", {"name": "f"}),
        ("logit_bias", {"50": 10}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "low"),
        ("service_tier", "flex"),
        ("store", True),
        ("metadata", {"team": "a"}),
        ("web_search_options", {}),
        ("verbosity", "low"),
        ("prompt_cache_key", "k"),
        ("best_of", 2),
        ("no_such_parameter", 1),
    ],
)
def test_a_parameter_that_asks_for_what_is_not_served_is_400_naming_it(
    http: httpx.Client, bus: FakeBus, param: str, value: object
) -> None:
    resp = post(http, **{param: value})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "unsupported"
    assert error["param"] == param
    assert param in error["message"]
    assert bus.envelopes() == []


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [], "tool_choice": "none"},
        {"tool_choice": "auto", "parallel_tool_calls": True},
        {"response_format": {"type": "text"}},
        {"logit_bias": {}, "store": False, "metadata": None, "service_tier": "auto"},
        {"modalities": ["text"], "audio": None, "reasoning_effort": None},
        {"temperature": None, "top_p": None, "n": None, "stop": None, "stream": None},
        {"frequency_penalty": None, "presence_penalty": None, "logprobs": None},
    ],
)
def test_values_that_ask_for_nothing_pass(
    http: httpx.Client, bus: FakeBus, fields: dict[str, object]
) -> None:
    resp = post(http, **fields)
    assert resp.status_code == 200, resp.text
    sent = payload(bus)
    assert (sent.temperature, sent.top_p, sent.stop) == (1.0, 1.0, [])


def test_penalties_and_logprobs_reach_the_model(http: httpx.Client, bus: FakeBus) -> None:
    resp = post(http, frequency_penalty=0.5, presence_penalty=-1, logprobs=True, top_logprobs=2)
    assert resp.status_code == 200, resp.text
    sent = payload(bus)
    assert (sent.frequency_penalty, sent.presence_penalty) == (0.5, -1.0)
    assert (sent.logprobs, sent.top_logprobs) == (True, 2)


def test_defaults_leave_the_newer_fields_off_the_wire(http: httpx.Client, bus: FakeBus) -> None:
    assert post(http).status_code == 200
    [env] = bus.envelopes()
    assert isinstance(env.payload, dict)
    assert not {"stream", "frequency_penalty", "logprobs", "top_logprobs"} & env.payload.keys()


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"frequency_penalty": 2.5}, 422),
        ({"presence_penalty": -3}, 422),
        ({"top_logprobs": 21, "logprobs": True}, 422),
        ({"top_logprobs": 2}, 422),  # without logprobs
        ({"logprobs": True, "stream": True}, 400),
    ],
)
def test_out_of_range_or_conflicting_values_are_refused(
    http: httpx.Client, bus: FakeBus, fields: dict[str, object], status: int
) -> None:
    resp = post(http, **fields)
    assert resp.status_code == status, resp.text
    assert bus.envelopes() == []


def test_the_openai_client_reads_the_logprobs(
    chat_settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    entries = [
        TokenLogprob(
            token="Hi", logprob=-0.25, top_logprobs=[TopLogprob(token="Hi", logprob=-0.25)]
        ),
        TokenLogprob(token="\ufffd", logprob=-1.5, top_logprobs=[]),
    ]
    bus.responder = lambda env: chat_answer(env, entries)
    with serving(build_app(chat_settings, bus=bus, topics=topics)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="chat",
            messages=USER,
            logprobs=True,
            top_logprobs=1,  # type: ignore[arg-type]
        )
        client.close()
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    first, second = logprobs.content
    assert (first.token, first.logprob, first.bytes) == ("Hi", -0.25, [72, 105])
    assert [(t.token, t.logprob) for t in first.top_logprobs] == [("Hi", -0.25)]
    assert second.bytes is None  # part of a character: its own bytes are not known


def test_an_answer_without_logprobs_says_null(http: httpx.Client) -> None:
    body = post(http).json()
    assert body["choices"][0]["logprobs"] is None


def test_message_shapes_become_the_chat_contract(http: httpx.Client, bus: FakeBus) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
        },
        {"role": "assistant", "content": "Hi", "tool_calls": [], "refusal": None},
        {"role": "user", "content": "Again"},
    ]
    assert post(http, messages=messages).status_code == 200
    sent = [(m.role, m.content) for m in payload(bus).messages]
    assert sent == [
        ("system", "Be brief."),
        ("user", "Hello"),
        ("assistant", "Hi"),
        ("user", "Again"),
    ]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "42", "tool_call_id": "c1"}, "messages[0].tool_call_id"),
        ({"role": "tool", "content": "42"}, "messages[0].role"),
        ({"role": "user", "content": "x", "name": "ann"}, "messages[0].name"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            "messages[0].content",
        ),
        ({"role": "assistant", "content": None}, "messages[0].content"),
    ],
)
def test_message_parts_the_models_cannot_take_are_400_naming_them(
    http: httpx.Client, bus: FakeBus, message: dict[str, object], param: str
) -> None:
    resp = post(http, messages=[message])
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    assert bus.envelopes() == []


def test_safety_identifier_and_user_are_recorded(http: httpx.Client, bus: FakeBus) -> None:
    assert post(http, user="u1", safety_identifier="s1").status_code == 200
    [env] = bus.envelopes()
    assert env.attributes == {"user": "u1", "safety_identifier": "s1"}

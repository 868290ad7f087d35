"""Structured outputs over the in-memory bus, with the official ``openai`` client:
``response_format`` and forced tool calls reach the model as an output format (and a
prompt hint), answers come back as ``tool_calls`` (streamed too), and what is not
served (``tool_choice: "auto"``) is refused by name."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from services.common.chat import ChatPayload
from services.common.messages import OodCheck
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, assert_refused
from tests.unit.gateway.test_openai_stream import delta, grant, reply, script

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
FORCED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture
def served(
    chat_settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> Iterator[tuple[openai.OpenAI, str]]:
    with serving(build_app(chat_settings, bus=bus, topics=topics)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
        yield client, url
        client.close()


def sent(bus: FakeBus) -> ChatPayload:
    [env] = bus.envelopes()
    return ChatPayload.model_validate(env.payload)


def post(url: str, **fields: object) -> httpx.Response:
    body = {"model": "chat", "messages": USER, **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)


def test_json_object_and_json_schema_reach_the_model(
    served: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = served
    bus.responder = script(reply('{"a": 1}'))
    answer = client.chat.completions.create(
        model="chat",
        messages=USER,
        response_format={"type": "json_object"},  # type: ignore[arg-type]
    )
    assert json.loads(answer.choices[0].message.content or "") == {"a": 1}
    form = sent(bus).output_format
    assert form is not None
    assert form.json_schema is None
    bus.produced.clear()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    client.chat.completions.create(
        model="chat",
        messages=USER,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    form = sent(bus).output_format
    assert form is not None
    assert form.json_schema == schema


def test_a_forced_tool_call_comes_back_as_tool_calls(
    served: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = served
    bus.responder = script(reply('{"city": "Paris"}'))
    answer = client.chat.completions.create(
        model="chat",
        messages=USER,
        tools=[WEATHER],
        tool_choice=FORCED,  # type: ignore[arg-type,list-item]
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    payload = sent(bus)
    assert payload.output_format is not None
    assert payload.output_format.json_schema == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert payload.messages[0].role == "system"
    assert "get_weather" in payload.messages[0].content


def test_required_over_several_tools_names_the_one_called(
    served: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = served
    bus.responder = script(reply('{"name": "get_time", "arguments": {"zone": "UTC"}}'))
    answer = client.chat.completions.create(
        model="chat",
        messages=USER,
        tools=[WEATHER, TIME],
        tool_choice="required",  # type: ignore[arg-type,list-item]
    )
    [call] = answer.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_time",
        {"zone": "UTC"},
    )  # type: ignore[union-attr]
    form = sent(bus).output_format
    assert form is not None
    assert form.json_schema is not None
    names = [b["properties"]["name"]["const"] for b in form.json_schema["anyOf"]]  # type: ignore[index,union-attr,call-overload]
    assert names == ["get_weather", "get_time"]


def test_a_cut_answer_or_the_safe_reply_is_text(
    served: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = served
    bus.responder = script(reply('{"city": "Pa', finish="length"))
    body = post(url, tools=[WEATHER], tool_choice=FORCED).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == '{"city": "Pa'
    flagged = OodCheck(status="flagged", detector="ood", score=9.0)
    bus.responder = script(reply("Sorry, not that.", reason="ood_safe_reply", ood=flagged))
    body = post(url, tools=[WEATHER], tool_choice=FORCED).json()
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Sorry, not that.",
        "tool_calls": None,
    }


def test_a_forced_tool_call_streams_its_arguments(
    served: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = served
    bus.responder = script(
        grant(), delta(0, '{"city"'), delta(7, ': "Paris"}', seq=1), reply('{"city": "Paris"}')
    )
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=USER,
            tools=[WEATHER],
            tool_choice=FORCED,
            stream=True,  # type: ignore[arg-type,list-item]
        )
    )
    calls = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert calls[0][0].id is not None
    assert calls[0][0].function.name == "get_weather"  # type: ignore[union-attr]
    arguments = "".join(call[0].function.arguments or "" for call in calls)  # type: ignore[union-attr]
    assert json.loads(arguments) == {"city": "Paris"}
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)
    ends = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert ends == ["tool_calls"]


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"tools": [WEATHER]}, 400, "tool_choice"),  # "auto" by default
        ({"tools": [WEATHER], "tool_choice": "auto"}, 400, "tool_choice"),
        (
            {"tools": [{"type": "custom", "custom": {"name": "x"}}], "tool_choice": "required"},
            400,
            "tools",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, 400, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": FORCED, "response_format": {"type": "json_object"}},
            400,
            "response_format",
        ),
        ({"tools": [WEATHER, TIME], "tool_choice": "required", "stream": True}, 400, "stream"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            422,
            None,
        ),
        ({"tool_choice": "required"}, 422, None),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 422, None),
        ({"response_format": {"type": "yaml"}}, 422, None),
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
    resp = post(url, **fields)
    assert_refused(resp, bus, status, param)


def test_tool_choice_none_answers_in_text(served: tuple[openai.OpenAI, str], bus: FakeBus) -> None:
    _, url = served
    bus.responder = script(reply("It is sunny."))
    body = post(url, tools=[WEATHER], tool_choice="none", parallel_tool_calls=False).json()
    assert body["choices"][0]["message"]["content"] == "It is sunny."
    assert sent(bus).output_format is None

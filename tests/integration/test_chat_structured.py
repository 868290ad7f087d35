"""Structured outputs from the real chat model through the whole stack (openai client
-> gateway -> Kafka -> SmolLM2 worker with xgrammar masks -> rendezvous): JSON mode
parses, a schema's answers validate, a forced tool call's arguments validate against
the tool's parameters, streamed and not."""

from __future__ import annotations

import json

import jsonschema
import openai

from tests.integration.stack import Launch, Worker, launch_stack_fixture  # noqa: F401

CHAT = {
    "endpoint": "chat",
    "deadline_ms": 120_000,
    "models": ["smol"],
    "stages": [{"until_ms": "deadline", "accept": ["smol"]}],
}
QUESTIONS = [
    "What is the capital of France?",
    "How do I make lasagna?",
    "Set a timer for ten minutes",
    "what's my credit card balance",
]
PERSON = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"enum": ["France", "Italy", "Spain", "other"]},
        "sure": {"type": "boolean"},
    },
    "required": ["city", "country", "sure"],
    "additionalProperties": False,
}
TIMER = {
    "type": "function",
    "function": {
        "name": "set_timer",
        "description": "start a kitchen timer",
        "parameters": {
            "type": "object",
            "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 600}},
            "required": ["minutes"],
            "additionalProperties": False,
        },
    },
}
FORCED = {"type": "function", "function": {"name": "set_timer"}}


def ask(client: openai.OpenAI, question: str, **kw: object):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=200,
        **kw,  # type: ignore[arg-type]
    )


def test_json_mode_schemas_and_forced_tool_calls(launch_stack: Launch) -> None:
    stack = launch_stack(policies=[CHAT], workers=[Worker("smol", "models/specs/smol.yaml")])
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        for question in QUESTIONS:
            answer = ask(
                client, f"{question} Reply in JSON.", response_format={"type": "json_object"}
            )
            assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
        located = ask(
            client,
            "Where is the Eiffel Tower?",
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": PERSON},
            },
        )
        jsonschema.validate(json.loads(located.choices[0].message.content or ""), PERSON)
        called = ask(client, "Time my pasta for 9 minutes", tools=[TIMER], tool_choice=FORCED)
        chunks = list(
            ask(
                client,
                "Time my pasta for 9 minutes",
                tools=[TIMER],
                tool_choice=FORCED,
                stream=True,
            )
        )
    finally:
        client.close()

    assert called.choices[0].finish_reason == "tool_calls"
    [call] = called.choices[0].message.tool_calls or []
    assert call.function.name == "set_timer"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    jsonschema.validate(arguments, TIMER["function"]["parameters"])  # type: ignore[index]
    deltas = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    streamed = "".join(d[0].function.arguments or "" for d in deltas)  # type: ignore[union-attr]
    assert json.loads(streamed) == arguments  # greedy: the same call either way
    assert deltas[0][0].function.name == "set_timer"  # type: ignore[union-attr]

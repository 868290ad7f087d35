"""Constrained decoding on a tiny random LLaMA: whatever the model would write, the
answer is JSON valid for the request's schema (xgrammar's masks), alone or beside
unconstrained requests in one batch."""

from __future__ import annotations

import json

import pytest

from models.llama import ChatModel, ChatParams, GrammarSpec, InvalidRequestError
from models.llama.grammar import MAX_DEPTH
from tests.unit.models.test_llama_chat import ask, tiny_loaded

FLAG = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
CHOICE = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer"}},
    "required": ["color", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def chat() -> ChatModel:
    return ChatModel(tiny_loaded())


def schema(doc: dict[str, object]) -> GrammarSpec:
    return GrammarSpec("json_schema", json.dumps(doc))


@pytest.mark.parametrize("prompt", ["Hi", "Is it raining?", "abc " * 6])
def test_a_bounded_schema_gives_a_valid_document_and_stops(chat: ChatModel, prompt: str) -> None:
    (result,) = chat.generate([ask(prompt)], ChatParams(max_tokens=40, grammar=schema(FLAG)))
    assert result.finish_reason == "stop"
    assert json.loads(result.text) in ({"ok": True}, {"ok": False})


def test_sampled_answers_keep_to_the_schema(chat: ChatModel) -> None:
    for seed in range(5):
        params = ChatParams(max_tokens=60, temperature=1.0, seed=seed, grammar=schema(CHOICE))
        (result,) = chat.generate([ask("Pick one")], params)
        assert result.finish_reason == "stop"
        doc = json.loads(result.text)
        assert doc["color"] in {"red", "green", "blue"}
        assert isinstance(doc["n"], int)


def test_a_constrained_row_leaves_its_batch_neighbours_alone(chat: ChatModel) -> None:
    free = ChatParams(max_tokens=12)
    (alone,) = chat.generate([ask("Hello")], free)
    ids = [
        chat.submit(ask("Hello"), free),
        chat.submit(ask("Hello"), ChatParams(max_tokens=40, grammar=schema(FLAG))),
    ]
    done = {}
    while chat.has_work:
        done.update((r.request_id, r) for r in chat.step())
    assert done[ids[0]].token_ids == alone.token_ids
    assert json.loads(done[ids[1]].text) in ({"ok": True}, {"ok": False})


def test_json_object_starts_an_object(chat: ChatModel) -> None:
    (result,) = chat.generate(
        [ask("Hi")], ChatParams(max_tokens=8, grammar=GrammarSpec("json_object"))
    )
    assert result.text.startswith("{")


def test_a_schema_that_cannot_be_used_is_refused(chat: ChatModel) -> None:
    with pytest.raises(InvalidRequestError):
        chat.submit(ask("Hi"), ChatParams(grammar=GrammarSpec("json_schema", "{not json")))
    with pytest.raises(InvalidRequestError):
        GrammarSpec("json_schema")


@pytest.mark.parametrize("budget", [8, 30, 60])
def test_json_mode_closes_the_document_within_the_token_budget(
    chat: ChatModel, budget: int
) -> None:
    mode = GrammarSpec("json_object")
    for seed in range(4):
        params = ChatParams(max_tokens=budget, temperature=1.0, seed=seed, grammar=mode)
        (result,) = chat.generate([ask("Write a lot")], params)
        assert result.completion_tokens <= budget
        assert isinstance(json.loads(result.text), dict), result.text


def _accepts(chat: ChatModel, document: str) -> bool:
    constraint = chat._constraint(GrammarSpec("json_object"))
    matcher = constraint._matcher
    return bool(matcher.accept_string(document)) and bool(matcher.is_completed())


def test_json_mode_takes_any_object_within_its_bounds(chat: ChatModel) -> None:
    def nested(depth: int) -> str:
        return '{"a": ' * depth + "1" + "}" * depth

    assert _accepts(chat, '{"a": [1, "x", null, true, {"b": -2.5}], "c": {}}')
    assert _accepts(chat, nested(MAX_DEPTH))
    assert not _accepts(chat, nested(MAX_DEPTH + 1))
    assert not _accepts(chat, '{"a": "' + "x" * 257 + '"}')
    assert not _accepts(chat, '{"a": 1e16}')
    assert not _accepts(chat, "[1, 2]")  # JSON mode answers an object

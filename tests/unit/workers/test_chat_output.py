"""The chat runtime's answer in the output contract: log-probabilities named by token
text when the request asked, and no field at all when it did not."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from models.llama.batching import GenerationResult
from models.llama.sampling import TokenLogprob
from services.common.chat import ChatOutput, ChatPayload
from services.workers.chat_runtime import ChatRuntime, output_of


def result(logprobs: tuple[TokenLogprob, ...] | None) -> GenerationResult:
    return GenerationResult("r", "ab", (7, 8), "stop", 5, 2, 0.01, 0.1, 20.0, logprobs)


def test_logprobs_are_named_by_token_text() -> None:
    entries = (TokenLogprob(7, -0.5, ((7, -0.5), (9, -1.0))), TokenLogprob(8, -2.0, ()))
    out = ChatOutput.model_validate(output_of(result(entries), lambda t: f"<{t}>"))
    assert out.logprobs is not None
    assert [(e.token, e.logprob) for e in out.logprobs] == [("<7>", -0.5), ("<8>", -2.0)]
    assert [(a.token, a.logprob) for a in out.logprobs[0].top_logprobs] == [
        ("<7>", -0.5),
        ("<9>", -1.0),
    ]


def test_no_logprobs_field_unless_asked() -> None:
    out = output_of(result(None), str)
    assert isinstance(out, dict)
    assert "logprobs" not in out


def test_the_payload_maps_to_the_engines_parameters() -> None:
    runtime = ChatRuntime({"max_tokens_cap": 8})
    payload = ChatPayload.model_validate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 50,
            "frequency_penalty": 0.5,
            "presence_penalty": 1.0,
            "logprobs": True,
            "top_logprobs": 3,
        }
    )
    params = runtime.sampling(payload)
    assert (params.max_tokens, params.frequency_penalty, params.presence_penalty) == (8, 0.5, 1.0)
    assert params.logprobs == 3
    assert runtime.sampling(payload.model_copy(update={"logprobs": False})).logprobs is None


def test_an_output_format_becomes_the_engines_grammar() -> None:
    runtime = ChatRuntime({})
    base = {"messages": [{"role": "user", "content": "hi"}]}
    assert runtime.sampling(ChatPayload.model_validate(base)).grammar is None
    anything = runtime.sampling(ChatPayload.model_validate({**base, "output_format": {}}))
    assert (anything.grammar.kind, anything.grammar.schema) == ("json_object", None)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    held = runtime.sampling(
        ChatPayload.model_validate({**base, "output_format": {"json_schema": schema}})
    )
    assert held.grammar.kind == "json_schema"
    assert json.loads(held.grammar.schema) == schema


def test_a_payload_is_a_conversation_or_a_prompt_never_both() -> None:
    turn = [{"role": "user", "content": "hi"}]
    assert ChatPayload.model_validate({"prompt": "Once"}).to_wire()["prompt"] == "Once"
    for bad in ({}, {"messages": turn, "prompt": "Once"}, {"prompt": ""}):
        with pytest.raises(ValidationError):
            ChatPayload.model_validate(bad)

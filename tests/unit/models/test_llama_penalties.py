"""Repetition penalties and log-probabilities in the BatchEngine, checked against a
plain full-forward reference on a tiny random LLaMA."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from models.llama import BatchEngine, InvalidRequestError, SamplingParams
from tests.unit.models.test_llama_batching import PROMPTS, alone, by_id
from tests.unit.models.test_llama_chat import tiny_model


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model()


def last_logits(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def reference_greedy(
    model: LlamaForCausalLM, prompt: list[int], n: int, frequency: float, presence: float
) -> list[int]:
    """Greedy decoding by full forward passes with OpenAI's penalty formula."""
    out: list[int] = []
    for _ in range(n):
        logits = last_logits(model, prompt + out)
        for token in set(out):
            logits[token] -= out.count(token) * frequency + presence
        out.append(int(logits.argmax()))
    return out


@pytest.mark.parametrize(("frequency", "presence"), [(1.5, 0.0), (0.0, 2.0), (0.7, 0.5)])
def test_penalties_follow_the_reference(
    model: LlamaForCausalLM, frequency: float, presence: float
) -> None:
    params = SamplingParams(max_tokens=16, frequency_penalty=frequency, presence_penalty=presence)
    penalised = list(alone(model, PROMPTS[2], params))
    assert penalised == reference_greedy(model, PROMPTS[2], 16, frequency, presence)
    assert penalised != list(alone(model, PROMPTS[2], SamplingParams(max_tokens=16)))


def test_a_penalised_row_leaves_its_batch_neighbours_alone(model: LlamaForCausalLM) -> None:
    engine = BatchEngine(model)
    plain = engine.submit(PROMPTS[1], SamplingParams(max_tokens=12))
    engine.submit(PROMPTS[2], SamplingParams(max_tokens=12, presence_penalty=2.0))
    assert by_id(engine.run())[plain].token_ids == alone(model, PROMPTS[1], SamplingParams(12))


def test_logprobs_are_the_models_log_softmax_with_the_top_k(model: LlamaForCausalLM) -> None:
    engine = BatchEngine(model)
    engine.submit(PROMPTS[3], SamplingParams(max_tokens=10, logprobs=3))
    (result,) = engine.run()
    assert result.logprobs is not None
    assert [e.token_id for e in result.logprobs] == list(result.token_ids)
    prompt = PROMPTS[3]
    for i, entry in enumerate(result.logprobs):
        expected = torch.log_softmax(last_logits(model, prompt + list(result.token_ids[:i])), -1)
        assert entry.logprob == pytest.approx(float(expected[entry.token_id]), abs=1e-4)
        top = expected.topk(3)
        assert [t for t, _ in entry.top] == top.indices.tolist()
        assert [lp for _, lp in entry.top] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert entry.top[0][0] == entry.token_id  # greedy takes the likeliest


def test_no_logprobs_unless_asked_and_none_for_the_end_of_sequence(
    model: LlamaForCausalLM,
) -> None:
    assert alone_result(model, SamplingParams(max_tokens=5)).logprobs is None
    engine = BatchEngine(model, eos_token_ids={int(alone(model, PROMPTS[1])[2])})
    engine.submit(PROMPTS[1], SamplingParams(max_tokens=16, logprobs=0))
    (result,) = engine.run()
    assert result.finish_reason == "stop"
    assert result.completion_tokens == 3
    assert result.logprobs is not None
    assert len(result.logprobs) == 2
    assert all(e.top == () for e in result.logprobs)


def alone_result(model: LlamaForCausalLM, params: SamplingParams):  # type: ignore[no-untyped-def]
    engine = BatchEngine(model)
    engine.submit(PROMPTS[0], params)
    (result,) = engine.run()
    return result


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frequency_penalty": 2.5},
        {"presence_penalty": -2.1},
        {"presence_penalty": float("nan")},
        {"logprobs": 21},
        {"logprobs": -1},
    ],
)
def test_out_of_range_penalties_and_logprobs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]

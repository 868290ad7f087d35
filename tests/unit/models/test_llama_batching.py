"""BatchEngine on a tiny random LLaMA: continuous batching, stop conditions, deadlines."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from transformers import LlamaForCausalLM

from models.llama import (
    BatchEngine,
    EngineConfig,
    GenerationResult,
    InvalidRequestError,
    PromptTooLongError,
    RequestTooLargeError,
    SamplingParams,
)
from tests.unit.models.test_llama_chat import CONTEXT, tiny_model

PROMPTS = [[5, 6, 7], list(range(10, 40)), [33] * 12, [99, 4, 8, 15, 16, 23, 42], [70]]
GREEDY = SamplingParams(max_tokens=16)


class FakeClock:
    """Monotonic seconds that move only when told, or by ``tick`` on every read."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 0.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model()


def by_id(results: Sequence[GenerationResult]) -> dict[str, GenerationResult]:
    return {r.request_id: r for r in results}


def alone(
    model: LlamaForCausalLM, prompt: list[int], params: SamplingParams = GREEDY
) -> tuple[int, ...]:
    engine = BatchEngine(model)
    engine.submit(prompt, params)
    (result,) = engine.run()
    return result.token_ids


def test_batch_of_mixed_lengths_equals_one_by_one(model: LlamaForCausalLM) -> None:
    engine = BatchEngine(model)
    ids = [engine.submit(p, GREEDY) for p in PROMPTS]
    results = by_id(engine.run())
    assert [results[i].token_ids for i in ids] == [alone(model, p) for p in PROMPTS]
    assert all(r.finish_reason == "length" and r.completion_tokens == 16 for r in results.values())


def test_greedy_matches_transformers_generate(model: LlamaForCausalLM) -> None:
    prompt = PROMPTS[1]
    expected = model.generate(
        torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None
    )[0, len(prompt) :].tolist()
    assert list(alone(model, prompt, SamplingParams(max_tokens=12))) == expected


def test_late_requests_join_the_running_batch(model: LlamaForCausalLM) -> None:
    engine = BatchEngine(model, EngineConfig(max_batch_size=3))
    first = engine.submit(PROMPTS[1], GREEDY)
    results = by_id(engine.step() + engine.step())  # first has 2 tokens now
    late = [engine.submit(p, GREEDY) for p in PROMPTS[2:5]]
    results |= by_id(engine.step())
    assert (engine.running, engine.waiting) == (3, 1)  # two joined; the batch is full
    results |= by_id(engine.run())
    assert results[first].token_ids == alone(model, PROMPTS[1])
    assert [results[i].token_ids for i in late] == [alone(model, p) for p in PROMPTS[2:5]]


def test_reset_drops_every_request_and_the_engine_serves_again(model: LlamaForCausalLM) -> None:
    engine = BatchEngine(model, EngineConfig(max_batch_size=1))
    running = engine.submit(PROMPTS[1], GREEDY)
    engine.step()
    waiting = engine.submit(PROMPTS[2], GREEDY)
    assert sorted(engine.reset()) == sorted([running, waiting])
    assert (engine.running, engine.waiting, engine.has_work) == (0, 0, False)
    again = engine.submit(PROMPTS[3], GREEDY)
    assert by_id(engine.run())[again].token_ids == alone(model, PROMPTS[3])


def test_token_budget_bounds_the_batch(model: LlamaForCausalLM) -> None:
    a, b = PROMPTS[1], PROMPTS[2]
    budget = len(a) + len(b) + 2 * GREEDY.max_tokens - 1  # not both at once
    engine = BatchEngine(model, EngineConfig(max_batch_tokens=budget))
    ids = [engine.submit(a, GREEDY), engine.submit(b, GREEDY)]
    results = by_id(engine.step())
    assert (engine.running, engine.waiting) == (1, 1)
    results |= by_id(engine.run())
    assert [results[i].token_ids for i in ids] == [alone(model, a), alone(model, b)]


def test_a_request_over_the_token_budget_is_refused(model: LlamaForCausalLM) -> None:
    engine = BatchEngine(model, EngineConfig(max_batch_tokens=20))
    with pytest.raises(RequestTooLargeError):
        engine.submit(PROMPTS[1], GREEDY)


def test_prompt_filling_the_context_is_refused_and_max_tokens_clamped(
    model: LlamaForCausalLM,
) -> None:
    engine = BatchEngine(model)
    with pytest.raises(PromptTooLongError):
        engine.submit([7] * CONTEXT)
    with pytest.raises(InvalidRequestError):
        engine.submit([])
    engine.submit([7] * (CONTEXT - 5), SamplingParams(max_tokens=100))
    (result,) = engine.run()
    assert (result.finish_reason, result.completion_tokens) == ("length", 5)


def test_end_of_sequence_token_stops_one_request_only(model: LlamaForCausalLM) -> None:
    free = alone(model, PROMPTS[0])
    eos = free[4]
    engine = BatchEngine(model, eos_token_ids={eos})
    ids = [engine.submit(PROMPTS[0], GREEDY), engine.submit(PROMPTS[3], GREEDY)]
    results = by_id(engine.run())
    stopped = results[ids[0]]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free[: free.index(eos) + 1]
    other = alone(model, PROMPTS[3])
    if eos not in other:
        assert results[ids[1]].token_ids == other


def test_deadline_returns_the_partial_answer(model: LlamaForCausalLM) -> None:
    clock = FakeClock()
    engine = BatchEngine(model, clock=clock)
    short = engine.submit(PROMPTS[1], SamplingParams(max_tokens=50), deadline=5.0)
    free = engine.submit(PROMPTS[3], GREEDY)
    results: dict[str, GenerationResult] = {}
    while engine.has_work:
        results |= by_id(engine.step())
        clock.now += 1.0
    cut = results[short]
    assert cut.finish_reason == "deadline"
    assert 0 < cut.completion_tokens < 50
    assert (
        cut.token_ids
        == alone(model, PROMPTS[1], SamplingParams(max_tokens=50))[: cut.completion_tokens]
    )
    assert results[free].token_ids == alone(model, PROMPTS[3])  # the others go on unharmed


def test_deadline_is_predicted_from_the_step_time(model: LlamaForCausalLM) -> None:
    clock = FakeClock(tick=0.01)  # every clock read costs 10 ms: steps take a steady time
    engine = BatchEngine(model, clock=clock)
    deadline = 1.0
    engine.submit(PROMPTS[0], SamplingParams(max_tokens=100), deadline=deadline)
    (result,) = engine.run()
    assert result.finish_reason == "deadline"
    assert result.completion_tokens > 1
    assert result.duration_s <= deadline  # stopped before the deadline, not after it


def test_a_request_still_waiting_at_its_deadline_returns_empty(model: LlamaForCausalLM) -> None:
    clock = FakeClock()
    engine = BatchEngine(model, EngineConfig(max_batch_size=1), clock=clock)
    engine.submit(PROMPTS[0], GREEDY)
    starved = engine.submit(PROMPTS[1], GREEDY, deadline=2.0)
    results: dict[str, GenerationResult] = {}
    while engine.has_work:
        results |= by_id(engine.step())
        clock.now += 1.0
    late = results[starved]
    assert (late.finish_reason, late.completion_tokens, late.ttft_s) == ("deadline", 0, None)


def test_usage_and_timings(model: LlamaForCausalLM) -> None:
    clock = FakeClock()
    engine = BatchEngine(model, clock=clock)
    engine.submit(PROMPTS[1], SamplingParams(max_tokens=4))
    clock.now = 2.0  # the request waited 2 s before the first step
    results = []
    while engine.has_work:
        results += engine.step()
        clock.now += 0.5
    (result,) = results
    assert (result.prompt_tokens, result.completion_tokens) == (len(PROMPTS[1]), 4)
    assert result.ttft_s == pytest.approx(2.0)
    assert result.duration_s == pytest.approx(3.5)
    assert result.tokens_per_s == pytest.approx(4 / 1.5)


def test_seeded_sampling_is_repeatable_and_batch_independent(model: LlamaForCausalLM) -> None:
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    first = alone(model, PROMPTS[1], params)
    assert alone(model, PROMPTS[1], params) == first
    engine = BatchEngine(model)
    rid = engine.submit(PROMPTS[1], params)
    engine.submit(PROMPTS[2], SamplingParams(max_tokens=12, temperature=1.0, seed=8))
    assert by_id(engine.run())[rid].token_ids == first


def test_a_tiny_top_p_is_greedy(model: LlamaForCausalLM) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.7, top_p=1e-6, seed=1)
    assert alone(model, PROMPTS[2], params) == alone(
        model, PROMPTS[2], SamplingParams(max_tokens=12)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"stop": ("",)},
        {"seed": 2**64},
        {"seed": -(2**63) - 1},
    ],
)
def test_invalid_sampling_params_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def _letters(ids: Sequence[int]) -> str:
    """A fake decoder: a letter per token, U+FFFD (half a character) for every 7th id."""
    return "".join("\ufffd" if t % 7 == 0 else chr(97 + t % 26) for t in ids)


def test_partial_texts_are_prefixes_of_the_answer(model: LlamaForCausalLM) -> None:
    free = alone(model, PROMPTS[1])
    stop = _letters(free[5:8])
    engine = BatchEngine(model, decode=_letters)
    rid = engine.submit(PROMPTS[1], SamplingParams(max_tokens=16, stop=(stop,)))
    shown: list[str] = []
    results: list[GenerationResult] = []
    while engine.has_work:
        results += engine.step()
        shown += engine.partial_texts([rid, "nobody"]).values()
    (result,) = results
    assert result.finish_reason == "stop"
    assert stop not in result.text
    assert shown, "the request ran more than one step"
    for text in shown:
        assert result.text.startswith(text)
        assert not text.endswith("\ufffd")
    assert engine.partial_texts([rid]) == {}  # finished: no longer held

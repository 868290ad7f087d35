"""The torch.compile reference: the compiled copy leaves the caller's model alone, the
one-at-a-time loop counts what the engine answers (a fake engine and clock), and a
failed compilation is reported next to the uncompiled figures (a tiny model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlamaForCausalLM

from bench.torch_compile_ref import compiled, one_at_a_time, reference
from tests.unit.models.test_llama_chat import tiny_loaded

CONVERSATIONS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]


def test_the_compiled_copy_shares_the_weights_and_leaves_the_model_alone() -> None:
    loaded = tiny_loaded()
    twin = compiled(loaded)  # torch.compile is lazy: nothing compiles here
    assert isinstance(twin.model, LlamaForCausalLM)  # what the engine requires
    assert twin.model is not loaded.model
    assert "forward" in vars(twin.model)
    assert "forward" not in vars(loaded.model)
    assert twin.model.lm_head.weight is loaded.model.lm_head.weight
    assert twin.tokenizer is loaded.tokenizer


@dataclass
class Result:
    completion_tokens: int
    ttft_s: float | None


class FakeChat:
    """Answers each request after two steps of 10 clock units, ``tokens`` tokens."""

    def __init__(self, now: list[float], tokens: int, ttft: float | None) -> None:
        self.now, self.tokens, self.ttft = now, tokens, ttft
        self.steps = 0
        self.params: list[Any] = []

    def submit(self, messages: Any, params: Any) -> str:
        self.params.append(params)
        self.steps = 2
        return "r"

    @property
    def has_work(self) -> bool:
        return self.steps > 0

    def step(self) -> list[Result]:
        self.now[0] += 10.0
        self.steps -= 1
        return [Result(self.tokens, self.ttft)] if self.steps == 0 else []


def test_one_at_a_time_counts_the_engines_answers() -> None:
    now = [0.0]
    chat = FakeChat(now, tokens=4, ttft=3.0)
    r = one_at_a_time(chat, CONVERSATIONS, 8, clock=lambda: now[0])  # type: ignore[arg-type]
    assert (r["requests"], r["tokens"]) == (2, 8)
    assert r["tokens_per_s"] == 8 / 40.0
    assert (r["ttft_p50_s"], r["latency_p50_s"]) == (3.0, 20.0)
    assert chat.params[0].max_tokens == 8
    assert chat.params[0].temperature == 0.0  # greedy


def test_without_a_first_token_time_the_whole_wait_counts() -> None:
    now = [0.0]
    chat = FakeChat(now, tokens=0, ttft=None)
    r = one_at_a_time(chat, CONVERSATIONS[:1], 8, clock=lambda: now[0])  # type: ignore[arg-type]
    assert r["ttft_p50_s"] == 20.0


def test_a_failed_compilation_is_the_result() -> None:
    before = torch.get_num_threads()
    r = reference(tiny_loaded(), CONVERSATIONS, 4, 1, mode="no-such-mode")
    assert r["error"].startswith("RuntimeError")
    assert r["eager"]["requests"] == 2
    assert "tokens_per_s" not in r  # no compiled figures
    assert torch.get_num_threads() == before

"""The llama.cpp reference counts what it streams: time to the first text, to the end,
and one token per chunk that carried text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bench.llama_cpp_ref import _runner


class _FakeLlama:
    """Streams chunks shaped like llama-cpp-python's, one clock tick apart."""

    def __init__(self, texts: list[str], ticks: list[float]) -> None:
        self.texts = texts
        self.ticks = ticks
        self.calls: list[dict[str, Any]] = []

    def create_chat_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(kwargs)
        yield {"choices": [{"delta": {"role": "assistant"}}]}  # no text: not a token
        for text in self.texts:
            self.ticks[0] += 10.0
            yield {"choices": [{"delta": {"content": text}}]}
        yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}


def test_first_token_end_and_count() -> None:
    now = [0.0]
    llm = _FakeLlama(["Hel", "lo", "!"], now)
    run = _runner(llm, 32, clock=lambda: now[0])
    first, done, count = run([{"role": "user", "content": "hi"}], 32)
    assert (first, done, count) == (10.0, 30.0, 3)
    assert llm.calls[0]["temperature"] == 0.0  # greedy, as the engine's bench runs
    assert llm.calls[0]["stream"] is True


def test_no_text_at_all_counts_the_whole_wait() -> None:
    now = [0.0]
    run = _runner(_FakeLlama([], now), 32, clock=lambda: now[0])
    assert run([{"role": "user", "content": "hi"}], 32) == (0.0, 0.0, 0)

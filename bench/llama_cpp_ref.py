"""llama.cpp as a reference runtime for bench.llm_throughput: the same GGUF file, greedy,
the same prompts and token limit, one request at a time (llama-cpp-python's API runs
one sequence per ``Llama`` object), at 1 thread (the engine's) and at 2 (reported apart).

Optional: ``make llama-cpp`` builds and installs llama-cpp-python; without it
``reference`` returns None and the bench says so.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.one_by_one import one_by_one, timed


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def reference(
    gguf: Path,
    conversations: Sequence[list[dict[str, str]]],
    max_tokens: int,
    threads: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any] | None:
    """Tokens/s, time to first token and request latency of llama.cpp on ``gguf``, one
    request at a time; None when llama-cpp-python is not installed."""
    if not available():
        return None
    from llama_cpp import Llama  # noqa: PLC0415 - optional

    llm = Llama(
        model_path=str(gguf),
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    run = _runner(llm, max_tokens, clock)
    run(conversations[0][:1], 8)  # warm-up
    return {"threads": threads} | one_by_one(run, conversations, max_tokens, clock)


def _runner(
    llm: Any, max_tokens: int, clock: Callable[[], float]
) -> Callable[[list[dict[str, str]], int], tuple[float, float, int]]:
    """One streamed, greedy chat completion: (seconds to the first token, seconds to the
    end, tokens generated: the streamed chunks that carried text, one token each)."""

    def run(messages: list[dict[str, str]], limit: int) -> tuple[float, float, int]:
        stream = llm.create_chat_completion(
            messages=messages, max_tokens=limit, temperature=0.0, stream=True
        )  # lazy: the prompt pass runs inside the timing
        return timed((chunk["choices"][0]["delta"].get("content") for chunk in stream), clock)

    return run

"""llama.cpp as a reference runtime for bench.llm_throughput: the same GGUF file, greedy,
the same prompts and token limit, one request at a time (llama-cpp-python's API runs
one sequence per ``Llama`` object), at 1 thread (the engine's) and at 2 (reported apart).

Optional: ``make llama-cpp`` builds and installs llama-cpp-python; without it
``reference`` returns None and the bench says so.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import quantile


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
    ttft, latency, tokens = [], [], 0
    started = clock()
    for messages in conversations:
        first, done, count = run(messages, max_tokens)
        ttft.append(first)
        latency.append(done)
        tokens += count
    wall = clock() - started
    return {
        "threads": threads,
        "requests": len(conversations),
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": quantile(ttft, 0.99),
        "latency_p50_s": statistics.median(latency),
    }


def _runner(
    llm: Any, max_tokens: int, clock: Callable[[], float]
) -> Callable[[list[dict[str, str]], int], tuple[float, float, int]]:
    """One streamed, greedy chat completion: (seconds to the first token, seconds to the
    end, tokens generated: the streamed chunks that carried text, one token each)."""

    def run(messages: list[dict[str, str]], limit: int) -> tuple[float, float, int]:
        t0 = clock()
        first = None
        count = 0
        stream = llm.create_chat_completion(
            messages=messages, max_tokens=limit, temperature=0.0, stream=True
        )
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content"):
                count += 1
                if first is None:
                    first = clock() - t0
        done = clock() - t0
        return (done if first is None else first), done, count

    return run

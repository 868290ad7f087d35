"""One request at a time through a reference runtime: the figures bench.llm_throughput
prints for each (tokens/s over the whole run, time to first token, request latency)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from bench.loadgen import quantile

Item = TypeVar("Item")
Run = Callable[[Item, int], tuple[float, float, int]]
"""One request: (seconds to the first token, seconds to the end, tokens generated)."""


def one_by_one(
    run: Run[Item],
    items: Sequence[Item],
    max_tokens: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """``run`` on each item in turn; tokens/s, time to first token p50/p99, latency p50."""
    ttft, latency, tokens = [], [], 0
    started = clock()
    for item in items:
        first, done, count = run(item, max_tokens)
        ttft.append(first)
        latency.append(done)
        tokens += count
    wall = clock() - started
    return {
        "requests": len(items),
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": quantile(ttft, 0.99),
        "latency_p50_s": statistics.median(latency),
    }


def timed(
    pieces: Iterable[object], clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float, int]:
    """Consume a lazy stream of generated pieces (one per token; an empty piece is not
    counted): (seconds to the first, seconds to the end, pieces counted). The clock
    starts before the stream's first step, so a prompt pass inside it is counted."""
    t0 = clock()
    first, count = None, 0
    for piece in pieces:
        if piece:
            count += 1
            if first is None:
                first = clock() - t0
    done = clock() - t0
    return (done if first is None else first), done, count

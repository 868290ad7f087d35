"""The engine with torch.compile on the model's forward, against itself without, as a reference.

Both sides are the project's own engine (``models.llama.ChatModel``: ``submit``, then
``step`` until the answer, as ``bench.llm_throughput.engine`` at concurrency 1) on the
same loaded model (float32 in the bench), greedy, the same prompts and token limit, one
request at a time. The compiled side runs a shallow copy of the model (the same weights)
whose ``forward`` is ``torch.compile(..., dynamic=True)`` with the default inductor mode,
so prefill and the growing KV cache (transformers' ``DynamicCache``) share one set of
graphs; the caller's model is left as it was. ``compile_s`` is the wall time of the
first compiled request (8 tokens), which compiles the prefill and decode graphs; it is
excluded from the figures and shorter when inductor's on-disk cache already holds them.
``graphs_compiled_in_run`` counts graphs dynamo compiled during the measured run
(recompilations: 0 is expected). A failed compilation is a result: ``error`` then says
why, next to the uncompiled figures.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch._dynamo.utils import counters

from bench.one_by_one import one_by_one
from models.llama import ChatModel, ChatParams, LoadedModel


def compiled(loaded: LoadedModel, **options: Any) -> LoadedModel:
    """``loaded`` with a shallow copy of its model whose ``forward`` is compiled (the
    copy shares the weights and stays a ``LlamaForCausalLM``, as the engine expects)."""
    twin = copy.copy(loaded.model)
    twin.forward = torch.compile(twin.forward, **({"dynamic": True} | options))
    return LoadedModel(twin, loaded.tokenizer, loaded.report)


def one_at_a_time(
    chat: ChatModel,
    conversations: Sequence[list[dict[str, str]]],
    max_tokens: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Each conversation submitted alone and stepped to its answer: the figures."""
    params = ChatParams(max_tokens=max_tokens, temperature=0.0)

    def run(messages: list[dict[str, str]], limit: int) -> tuple[float, float, int]:
        t0 = clock()
        chat.submit(messages, dataclasses.replace(params, max_tokens=limit))  # type: ignore[arg-type]
        results = []
        while chat.has_work:
            results.extend(chat.step())
        done = clock() - t0
        first = results[0].ttft_s if results else None
        return (done if first is None else first), done, sum(r.completion_tokens for r in results)

    return one_by_one(run, conversations, max_tokens, clock)


def reference(
    loaded: LoadedModel,
    conversations: Sequence[list[dict[str, str]]],
    max_tokens: int,
    threads: int,
    clock: Callable[[], float] = time.perf_counter,
    **options: Any,
) -> dict[str, Any]:
    """The compiled engine's figures (``compile_s`` apart), its uncompiled figures as
    ``eager`` and the ratio ``x_eager``; ``options`` go to ``torch.compile``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        eager_chat = ChatModel(loaded)
        one_at_a_time(eager_chat, conversations[:1], 8, clock)  # warm-up
        eager = one_at_a_time(eager_chat, conversations, max_tokens, clock)
        out: dict[str, Any] = {
            "threads": threads,
            "dtype": loaded.report.dtype,
            "options": {"dynamic": True} | options,
            "eager": eager,
        }
        try:
            chat = ChatModel(compiled(loaded, **options))
            t0 = clock()
            one_at_a_time(chat, conversations[:1], 8, clock)  # compiles
            out["compile_s"] = clock() - t0
            graphs = counters["stats"]["unique_graphs"]
            result = one_at_a_time(chat, conversations, max_tokens, clock)
            result["graphs_compiled_in_run"] = counters["stats"]["unique_graphs"] - graphs
        except Exception as exc:  # noqa: BLE001 - a failed compilation is the result
            out["error"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
            return out
        out |= result
        out["x_eager"] = result["tokens_per_s"] / eager["tokens_per_s"]
        return out
    finally:
        torch.set_num_threads(before)

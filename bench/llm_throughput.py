"""Generation throughput of the chat worker's engine against the naive baseline, in
the same run, with the same model (SmolLM2-135M-Instruct by default), greedy decoding,
the same prompts and the same token limit (``--max-tokens``, 64). The naive side is
made to generate all of them (``min_new_tokens``); the engine stops a request at end of
sequence. Tokens/s counts the tokens each side actually generated (``tokens`` in the
JSON, for the naive run and for each engine level).

    python -m bench.llm_throughput            # about 2.5 minutes on 2 cores
    python -m bench.llm_throughput --quick
    python -m bench.llm_throughput --quantize none --dtype float32   # the exact engine

- baseline: transformers ``generate`` on one request at a time, with the default
  float32 model, as a plain transformers user runs it;
- worker engine: models.llama's continuous-batching engine, driven step by step
  (``submit``, then ``step`` in a loop, the calls the llama-chat worker makes), with
  the engine settings of models/specs/smol.yaml (max_batch_size 16, max_batch_tokens
  32768, int8) on its own copy of the model (by default bfloat16 with int8 decode
  weights: ``--dtype``, ``--quantize``), ``concurrency`` requests kept in
  flight (closed loop: a finished request is replaced at once). The clients start
  one per engine step (a ramp); the last level starts 16 at once (a burst).

Both sides use the same torch thread count (``--threads``, printed). Reports aggregate
tokens/s, request latency p50/p99 and time to first token p50/p99 at concurrency 1, 4
and 16. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from bench.loadgen import quantile
from models.llama import ChatModel, ChatParams, EngineConfig, LoadConfig, load

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain gravity to a child.",
    "Tell me a story about a cat.",
    "How do airplanes fly?",
    "What is a prime number?",
    "Describe a sunrise in the mountains.",
    "Give three tips for learning to cook.",
    "Why is the sky blue?",
]


def conversation(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


@torch.inference_mode()
def naive(chat: ChatModel, n: int, max_tokens: int) -> dict[str, float]:
    """transformers generate, one request at a time."""
    model, tokens, lat = chat.loaded.model, 0, []
    began = time.perf_counter()
    for i in range(n):
        ids = torch.tensor([chat.encode(conversation(i))])  # type: ignore[arg-type]
        t0 = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
        )
        lat.append(time.perf_counter() - t0)
        tokens += int(out.shape[1] - ids.shape[1])
    took = time.perf_counter() - began
    return {
        "tokens_per_s": tokens / took,
        "latency_p50_s": quantile(lat, 0.5),
        "latency_p99_s": quantile(lat, 0.99),
        "requests": n,
        "tokens": tokens,
    }


def engine(
    chat: ChatModel, concurrency: int, n: int, max_tokens: int, *, burst: bool = False
) -> dict[str, Any]:
    """Closed loop over the batching engine: ``concurrency`` requests in flight.

    The clients start one per engine step (a ramp), then each submits its next
    request as soon as its last one finished; ``burst`` starts them all at once.
    """
    params = ChatParams(max_tokens=max_tokens, temperature=0.0)
    submitted, done, tokens, lat, ttft = 0, 0, 0, [], []
    started: dict[str, float] = {}
    began = time.perf_counter()
    while done < n:
        ramp = 1 if not burst and submitted < concurrency else n
        for _ in range(ramp):
            if submitted >= n or submitted - done >= concurrency:
                break
            rid = chat.submit(conversation(submitted), params)  # type: ignore[arg-type]
            started[rid] = time.perf_counter()
            submitted += 1
        for result in chat.step():
            done += 1
            tokens += result.completion_tokens
            lat.append(time.perf_counter() - started.pop(result.request_id))
            if result.ttft_s is not None:
                ttft.append(result.ttft_s)
    took = time.perf_counter() - began
    return {
        "concurrency": concurrency,
        "start": "burst" if burst else "ramp",
        "tokens_per_s": tokens / took,
        "latency_p50_s": quantile(lat, 0.5),
        "latency_p99_s": quantile(lat, 0.99),
        "ttft_p50_s": quantile(ttft, 0.5),
        "ttft_p99_s": quantile(ttft, 0.99),
        "requests": n,
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm_throughput")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: the worker default)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--dtype", default="auto", help="engine dtype (auto: float32, bfloat16 with int8)"
    )
    parser.add_argument("--quantize", default="int8", help="engine weights: none or int8")
    args = parser.parse_args(argv)
    per_level = 2 if args.quick else 4  # requests per level = concurrency x this
    plain = load(LoadConfig(threads=args.threads))  # the default float32 model
    loaded = load(LoadConfig(threads=args.threads, dtype=args.dtype, quantize=args.quantize))
    baseline = ChatModel(plain)  # its tokenizer and chat template only
    # the engine settings of models/specs/smol.yaml (max_batch_size, max_batch_tokens),
    # so the bench measures what the stack's chat champion runs
    chat = ChatModel(loaded, EngineConfig(max_batch_size=16, max_batch_tokens=32768))
    threads = torch.get_num_threads()
    print(
        f"model {loaded.report.source} loaded in {loaded.report.seconds:.1f} s "
        f"(cache hit: {loaded.report.cache_hit}); torch threads {threads} for both; "
        f"naive: {plain.report.dtype}; engine: {loaded.report.dtype}, "
        f"quantize {loaded.report.quantize}",
        file=sys.stderr,
    )
    engine(chat, 1, 1, 8)  # warm-up
    naive(baseline, 1, 8)
    base = naive(baseline, 4 if args.quick else 8, args.max_tokens)
    print(
        f"naive generate   1 at a time  {base['tokens_per_s']:7.1f} tok/s  "
        f"latency p50 {base['latency_p50_s']:.2f} s  ({plain.report.dtype}, threads {threads})"
    )
    levels = []
    for conc, burst in ((1, False), (4, False), (16, False), (16, True)):
        r = engine(chat, conc, conc * per_level, args.max_tokens, burst=burst)
        r["x_naive"] = r["tokens_per_s"] / base["tokens_per_s"]
        levels.append(r)
        print(
            f"engine  concurrency {conc:>3} {r['start']:>5}  {r['tokens_per_s']:7.1f} tok/s "
            f"({r['x_naive']:.1f}x naive)  latency p50 {r['latency_p50_s']:.2f} s "
            f"p99 {r['latency_p99_s']:.2f} s  ttft p50 {r['ttft_p50_s'] * 1000:.0f} ms "
            f"p99 {r['ttft_p99_s'] * 1000:.0f} ms"
        )
    single = levels[0]
    out = {
        "model": str(loaded.report.source),
        "max_tokens": args.max_tokens,
        "threads": threads,
        "naive_dtype": plain.report.dtype,
        "engine_dtype": loaded.report.dtype,
        "engine_quantize": loaded.report.quantize,
        "naive": base,
        "engine": levels,
        "c16_vs_naive": levels[2]["x_naive"],
        "single_vs_naive": single["x_naive"],
        "ttft_p50_c16_vs_single": levels[2]["ttft_p50_s"] / single["ttft_p50_s"],
        "ttft_p50_c16_burst_vs_single": levels[3]["ttft_p50_s"] / single["ttft_p50_s"],
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in levels[:3]),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
and 16. When llama-cpp-python is installed (``make llama-cpp``), llama.cpp on the same
GGUF, one request at a time, at the same thread count and at 2 threads, is measured as
a reference (bench.llama_cpp_ref). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from bench import llama_cpp_ref
from bench.chaos_report import cpu_times, machine
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


@torch.inference_mode()
def static(chat: ChatModel, batch: int, max_tokens: int) -> dict[str, float]:
    """transformers generate on one padded batch of ``batch`` requests (left padding),
    what a transformers user tries after one at a time: every request waits for the
    whole batch."""
    model, tokenizer = chat.loaded.model, chat.tokenizer
    prompts = [chat.encode(conversation(i)) for i in range(batch)]  # type: ignore[arg-type]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    began = time.perf_counter()
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    took = time.perf_counter() - began
    tokens = int(out.shape[0] * (out.shape[1] - width))
    return {"batch": batch, "tokens_per_s": tokens / took, "latency_s": took, "tokens": tokens}


@torch.inference_mode()
def matmul_roofline(dtype: torch.dtype, size: int = 1024, repeats: int = 8) -> float:
    """This CPU's measured matrix-multiply rate (GFLOP/s) at ``dtype`` on the current
    thread count: the physical limit a compute-bound decode step approaches."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.nn.functional.linear(a, b)  # warm-up; linear: the kernel the model's layers use
    began = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e9


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
    steal0 = cpu_times()
    print("machine:", json.dumps(machine()), flush=True)
    per_level = 2 if args.quick else 4  # requests per level = concurrency x this
    plain = load(LoadConfig(threads=args.threads))  # the default float32 model
    loaded = load(LoadConfig(threads=args.threads, dtype=args.dtype, quantize=args.quantize))
    engine_dtype = loaded.report.dtype.removeprefix("torch.")
    same = load(LoadConfig(threads=args.threads, dtype=engine_dtype))  # no int8: plain HF
    baseline = ChatModel(plain)  # its tokenizer and chat template only
    matched = ChatModel(same)
    # the engine settings of models/specs/smol.yaml (max_batch_size, max_batch_tokens),
    # so the bench measures what the stack's chat champion runs
    chat = ChatModel(loaded, EngineConfig(max_batch_size=16, max_batch_tokens=32768))
    threads = torch.get_num_threads()
    print(
        f"model {loaded.report.source} loaded in {loaded.report.seconds:.1f} s "
        f"(cache hit: {loaded.report.cache_hit}); torch threads {threads} for all; "
        f"naive: {plain.report.dtype} and {same.report.dtype}; engine: {loaded.report.dtype}, "
        f"quantize {loaded.report.quantize}",
        file=sys.stderr,
    )
    engine(chat, 1, 1, 8)  # warm-up
    naive(baseline, 1, 8)
    naive(matched, 1, 8)
    count = 4 if args.quick else 8
    base = naive(baseline, count, args.max_tokens)
    base_matched = naive(matched, count, args.max_tokens)
    for label, r, dtype in (
        ("naive generate", base, plain.report.dtype),
        ("naive generate", base_matched, same.report.dtype),
    ):
        print(
            f"{label}   1 at a time  {r['tokens_per_s']:7.1f} tok/s  "
            f"latency p50 {r['latency_p50_s']:.2f} s  ({dtype}, threads {threads})"
        )
    statics = {}
    for batch in (4, 16):
        for name, model in (("float32", baseline), ("engine_precision", matched)):
            r = static(model, batch, args.max_tokens)
            statics[f"{name}_{batch}"] = r
            print(
                f"static batch {batch:>3} generate  {r['tokens_per_s']:7.1f} tok/s  "
                f"(whole batch {r['latency_s']:.2f} s, {model.loaded.report.dtype})"
            )
    levels = []
    for conc, burst in ((1, False), (4, False), (16, False), (16, True)):
        r = engine(chat, conc, conc * per_level, args.max_tokens, burst=burst)
        r["x_naive"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["x_naive_same_precision"] = r["tokens_per_s"] / base_matched["tokens_per_s"]
        if conc > 1:
            r["x_static_same_precision"] = (
                r["tokens_per_s"] / statics[f"engine_precision_{conc}"]["tokens_per_s"]
            )
        levels.append(r)
        vs_static = (
            f", {r['x_static_same_precision']:.1f}x static"
            if "x_static_same_precision" in r
            else ""
        )
        print(
            f"engine  concurrency {conc:>3} {r['start']:>5}  {r['tokens_per_s']:7.1f} tok/s "
            f"({r['x_naive']:.1f}x naive float32, {r['x_naive_same_precision']:.1f}x naive "
            f"{same.report.dtype}{vs_static})  latency p50 {r['latency_p50_s']:.2f} s "
            f"p99 {r['latency_p99_s']:.2f} s  ttft p50 {r['ttft_p50_s'] * 1000:.0f} ms "
            f"p99 {r['ttft_p99_s'] * 1000:.0f} ms"
        )
    llama_cpp = {}
    if llama_cpp_ref.available():
        for n_threads in sorted({threads, 2}):
            ref = llama_cpp_ref.reference(
                loaded.report.source,
                [conversation(i) for i in range(count)],
                args.max_tokens,
                n_threads,
            )
            assert ref is not None
            ref["x_naive"] = ref["tokens_per_s"] / base["tokens_per_s"]
            llama_cpp[f"threads_{n_threads}"] = ref
            print(
                f"llama.cpp 1 at a time  {ref['tokens_per_s']:7.1f} tok/s "
                f"({ref['x_naive']:.1f}x naive float32)  ttft p50 "
                f"{ref['ttft_p50_s'] * 1000:.0f} ms  latency p50 {ref['latency_p50_s']:.2f} s  "
                f"(same GGUF, threads {n_threads})"
            )
    else:
        print("llama.cpp: not installed (make llama-cpp builds it): no reference")
    params = sum(p.numel() for p in plain.model.parameters())  # float32, no int8 copies
    gflops = {
        name: matmul_roofline(dtype)
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }
    roof = {name: g * 1e9 / (2 * params) for name, g in gflops.items()}
    print(
        f"matmul roofline: float32 {gflops['float32']:.1f} GFLOP/s, bfloat16 "
        f"{gflops['bfloat16']:.1f} GFLOP/s on {threads} thread(s): at 2 x {params / 1e6:.0f}M "
        f"FLOP per token, at most {roof['float32']:.0f} / {roof['bfloat16']:.0f} tok/s; "
        f"engine c16 {levels[2]['tokens_per_s']:.0f} tok/s"
    )
    single = levels[0]
    out = {
        "model": str(loaded.report.source),
        "max_tokens": args.max_tokens,
        "threads": threads,
        "naive_dtype": plain.report.dtype,
        "matched_dtype": same.report.dtype,
        "engine_dtype": loaded.report.dtype,
        "engine_quantize": loaded.report.quantize,
        "naive": base,
        "naive_same_precision": base_matched,
        "static": statics,
        "engine": levels,
        "precision_gain_naive": base_matched["tokens_per_s"] / base["tokens_per_s"],
        "c16_vs_naive": levels[2]["x_naive"],
        "c16_vs_static_same_precision": levels[2]["x_static_same_precision"],
        "single_vs_naive": single["x_naive"],
        "ttft_p50_c16_vs_single": levels[2]["ttft_p50_s"] / single["ttft_p50_s"],
        "ttft_p50_c16_burst_vs_single": levels[3]["ttft_p50_s"] / single["ttft_p50_s"],
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in levels[:3]),
        "llama_cpp": llama_cpp or None,
        "matmul_gflops": gflops,
        "roofline_tokens_per_s": roof,
        "machine": machine(steal0),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

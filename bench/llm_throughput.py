"""Generation throughput of the chat worker's engine on each runtime against the naive
and static-batching baselines, in the same run, with the same model
(SmolLM2-135M-Instruct by default), greedy decoding, the same prompts and the same
token limit (``--max-tokens``, 64). The naive side is made to generate all of them
(``min_new_tokens``); the engine stops a request at end of sequence. Tokens/s counts
the tokens each side actually generated (``tokens`` in the JSON).

    python -m bench.llm_throughput            # about 5 minutes on 2 cores
    python -m bench.llm_throughput --quick
    python -m bench.llm_throughput --compile  # also the engine with torch.compile

Baselines (one thread, as every runtime here: ``--threads``):

- naive: transformers ``generate`` on one request at a time, float32 (what a plain
  transformers user runs), and again at the torch engine's precision;
- static batching: one left-padded batch of 4 and of 16 through ``generate`` (what a
  transformers user tries next), at both precisions.

Engines, driven step by step (``submit``, then ``step``: the calls the llama-chat worker
makes) with the settings of models/specs/smol.yaml (max_batch_size 16,
max_batch_tokens 32768), ``concurrency`` requests in flight (closed loop; clients start
one per step, the last level all at once):

- torch: the engine with ``--quantize`` (auto: int8 decode weights + bfloat16 where
  the CPU has bfloat16 instructions, else float32);
- llama.cpp (when ``make llama-cpp`` installed it): the runtime the worker chooses,
  with the weight format its timed probe picks (models.llama.cpp_weights), and again
  on f32 weights: the naive baseline's precision, so that ratio is scheduling and
  kernels only.

References (bench.llm_references): llama.cpp's own API one request at a time (1 and 2
threads), ONNX Runtime GenAI int4 and the engine with torch.compile. The matmul
roofline says how far tokens/s is from this CPU's limit. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from bench import llm_agreement
from bench.chaos_report import cpu_times, machine
from bench.llm_references import run_references
from bench.loadgen import quantile
from models.llama import ChatModel, ChatParams, EngineConfig, LoadConfig, build, load
from models.llama import cpp as cpp_runtime
from models.llama.cpu import choose_quantize

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


def sweep(
    chat: ChatModel,
    label: str,
    per_level: int,
    max_tokens: int,
    base: dict[str, Any],
    static_for: dict[int, dict[str, Any]],
    static_label: str,
) -> list[dict[str, Any]]:
    """The engine at concurrency 1, 4, 16 (ramp) and 16 (burst), each against the naive
    float32 baseline and against static batching at ``static_label``'s precision."""
    engine(chat, 1, 1, 8)  # warm-up
    levels = []
    for conc, burst in ((1, False), (4, False), (16, False), (16, True)):
        r = engine(chat, conc, conc * per_level, max_tokens, burst=burst)
        r["x_naive"] = r["tokens_per_s"] / base["tokens_per_s"]
        if conc in static_for:
            r["x_static"] = r["tokens_per_s"] / static_for[conc]["tokens_per_s"]
        levels.append(r)
        vs_static = f", {r['x_static']:.1f}x static {static_label}" if "x_static" in r else ""
        print(
            f"{label:<22} c{conc:<3}{r['start']:>5}  {r['tokens_per_s']:7.1f} tok/s "
            f"({r['x_naive']:.1f}x naive float32{vs_static})  latency p50 "
            f"{r['latency_p50_s']:.2f} s  ttft p50 {r['ttft_p50_s'] * 1000:.0f} ms "
            f"p99 {r['ttft_p99_s'] * 1000:.0f} ms",
            flush=True,
        )
    return levels


def cpp_chat(args: argparse.Namespace, weights: str) -> ChatModel:
    """The engine on llama.cpp (``weights``: a format, or auto: the timed probe)."""
    config = LoadConfig(threads=args.threads, runtime="llama.cpp", cpp_weights=weights)
    return build(config, EngineConfig(max_batch_size=16, max_batch_tokens=32768))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llm_throughput")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for every runtime (1: the worker's)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--dtype", default="auto", help="torch engine dtype (auto: float32, bfloat16 with int8)"
    )
    parser.add_argument(
        "--quantize", default="auto", help="torch engine weights: none, int8 or auto (per CPU)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also the engine with torch.compile (+1-3 min)"
    )
    args = parser.parse_args(argv)
    steal0 = cpu_times()
    print("machine:", json.dumps(machine()), flush=True)
    per_level = 2 if args.quick else 4  # requests per level = concurrency x this
    quantize = choose_quantize("cpu").quantize if args.quantize == "auto" else args.quantize
    plain = load(LoadConfig(threads=args.threads))  # the default float32 model
    loaded = load(LoadConfig(threads=args.threads, dtype=args.dtype, quantize=quantize))
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
        f"(cache hit: {loaded.report.cache_hit}); {threads} thread(s) for all; "
        f"naive: {plain.report.dtype} and {same.report.dtype}; torch engine: "
        f"{loaded.report.dtype}, quantize {loaded.report.quantize}",
        file=sys.stderr,
    )
    naive(baseline, 1, 8)  # warm-up
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
    float32_static = {b: statics[f"float32_{b}"] for b in (4, 16)}
    levels = sweep(
        chat,
        f"engine torch {engine_dtype}",
        per_level,
        args.max_tokens,
        base,
        {b: statics[f"engine_precision_{b}"] for b in (4, 16)},
        engine_dtype,
    )
    for r in levels:
        r["x_naive_same_precision"] = r["tokens_per_s"] / base_matched["tokens_per_s"]
        r["x_static_same_precision"] = r.get("x_static")
    prompts = PROMPTS + llm_agreement.QUESTIONS
    exact = llm_agreement.answers(baseline, prompts, 48)  # the float32 engine's answers

    def agrees(model: ChatModel, label: str) -> dict[str, Any]:
        result = llm_agreement.agreement(exact, llm_agreement.answers(model, prompts, 48))
        print(f"{label:<22} {llm_agreement.describe(result)}", flush=True)
        return result

    torch_agreement = agrees(chat, f"engine torch {engine_dtype}")
    cpp: dict[str, Any] = {}
    if cpp_runtime.available():
        chosen = cpp_chat(args, "auto")
        report = chosen.loaded.report
        print(f"llama.cpp weights chosen: {report.quantize} ({report.chosen_by})", flush=True)
        cpp["chosen_weights"] = report.quantize
        cpp["chosen_by"] = report.chosen_by
        formats = [report.quantize] + [w for w in ("f32", "gguf") if w != report.quantize]
        for weights in formats:
            model = chosen if weights == report.quantize else cpp_chat(args, weights)
            label = f"engine llama.cpp {weights}"
            cpp[weights] = {
                "levels": sweep(
                    model, label, per_level, args.max_tokens, base, float32_static, "float32"
                ),
                "agreement": agrees(model, label),
            }
            model.close()
        cpp["chosen"] = cpp[report.quantize]["levels"]
    else:
        print("llama.cpp: not installed (make llama-cpp builds it): the torch engine only")
    references = run_references(args, loaded, plain, base, count, threads)
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
        f"torch engine c16 {levels[2]['tokens_per_s']:.0f} tok/s"
        + (f", llama.cpp engine c16 {cpp['chosen'][2]['tokens_per_s']:.0f} tok/s" if cpp else "")
    )
    picked = cpp["chosen"] if cpp else levels
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
        "engine_agreement": torch_agreement,
        "llama_cpp_engine": cpp or None,
        "chosen_runtime": "llama.cpp" if cpp else "torch",
        "chosen_single_vs_naive": picked[0]["x_naive"],
        "chosen_c16_vs_static_float32": picked[2]["tokens_per_s"]
        / statics["float32_16"]["tokens_per_s"],
        "chosen_ttft_p50_c1_s": picked[0]["ttft_p50_s"],
        "precision_gain_naive": base_matched["tokens_per_s"] / base["tokens_per_s"],
        "c16_vs_naive": levels[2]["x_naive"],
        "c16_vs_static_same_precision": levels[2]["x_static_same_precision"],
        "single_vs_naive": levels[0]["x_naive"],
        "ttft_p50_c16_vs_single": levels[2]["ttft_p50_s"] / levels[0]["ttft_p50_s"],
        "ttft_p50_c16_burst_vs_single": levels[3]["ttft_p50_s"] / levels[0]["ttft_p50_s"],
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in levels[:3]),
        **references,
        "matmul_gflops": gflops,
        "roofline_tokens_per_s": roof,
        "machine": machine(steal0),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

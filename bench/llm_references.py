"""The other CPU runtimes bench.llm_throughput measures beside the engine, one request
at a time on the same prompts: llama.cpp's own Python API (1 thread and 2), ONNX
Runtime GenAI (int4, built from the same weights) and the engine with torch.compile
(``--compile``). Each is skipped, and says so, when its package is missing."""

from __future__ import annotations

import argparse
from typing import Any

from bench import llama_cpp_ref, ort_genai_ref, torch_compile_ref
from models.llama import LoadedModel


def conversations(count: int) -> list[list[dict[str, str]]]:
    from bench.llm_throughput import conversation  # noqa: PLC0415 - its prompts

    return [conversation(i) for i in range(count)]


def run_references(
    args: argparse.Namespace,
    loaded: LoadedModel,
    plain: LoadedModel,
    base: dict[str, Any],
    count: int,
    threads: int,
) -> dict[str, Any]:
    """Each reference's figures with ``x_naive`` (against ``base``, naive float32)."""
    convs = conversations(count)
    out: dict[str, Any] = {"llama_cpp": None, "ort_genai": None, "torch_compile": None}
    if llama_cpp_ref.available():
        out["llama_cpp"] = {}
        for n_threads in sorted({threads, 2}):
            ref = llama_cpp_ref.reference(loaded.report.source, convs, args.max_tokens, n_threads)
            assert ref is not None
            ref["x_naive"] = ref["tokens_per_s"] / base["tokens_per_s"]
            out["llama_cpp"][f"threads_{n_threads}"] = ref
            print(
                f"llama.cpp API 1 at a time  {ref['tokens_per_s']:7.1f} tok/s "
                f"({ref['x_naive']:.1f}x naive float32)  ttft p50 "
                f"{ref['ttft_p50_s'] * 1000:.0f} ms  latency p50 {ref['latency_p50_s']:.2f} s  "
                f"(the GGUF's own weights, threads {n_threads})",
                flush=True,
            )
    else:
        print("llama.cpp API: not installed (make llama-cpp builds it): no reference")
    if ort_genai_ref.available():
        model_dir = ort_genai_ref.prepare(plain.report.folder)  # built once, cached after
        ort = ort_genai_ref.reference(model_dir, convs, args.max_tokens, threads, plain.tokenizer)
        assert ort is not None
        ort["x_naive"] = ort["tokens_per_s"] / base["tokens_per_s"]
        out["ort_genai"] = ort
        print(
            f"onnxruntime-genai 1 at a time  {ort['tokens_per_s']:7.1f} tok/s "
            f"({ort['x_naive']:.1f}x naive float32)  ttft p50 {ort['ttft_p50_s'] * 1000:.0f} ms  "
            f"latency p50 {ort['latency_p50_s']:.2f} s  ({ort['precision']}, threads {threads}, "
            f"built in {ort['build_s']:.0f} s)",
            flush=True,
        )
    else:
        print("onnxruntime-genai: not installed (the bench-runtimes extra): no reference")
    if args.compile:
        compiled = torch_compile_ref.reference(plain, convs, args.max_tokens, threads)
        out["torch_compile"] = compiled
        if "error" in compiled:
            print(f"engine + torch.compile: failed ({compiled['error']})")
        else:
            print(
                f"engine float32 + torch.compile 1 at a time  {compiled['tokens_per_s']:7.1f} "
                f"tok/s ({compiled['x_eager']:.2f}x uncompiled "
                f"{compiled['eager']['tokens_per_s']:.1f})  ttft p50 "
                f"{compiled['ttft_p50_s'] * 1000:.0f} ms  (compile {compiled['compile_s']:.0f} s)"
            )
    return out

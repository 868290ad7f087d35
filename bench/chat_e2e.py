"""Chat through the real stack against the engine alone, in the same run:
``python -m bench.chat_e2e`` (about 5 minutes on 2 cores; ``--quick``: about 4).

1. **The engine alone**, in this process: the `smol` worker's own runtime
   (services/workers/chat_runtime.py) built from models/specs/smol.yaml, so the same
   precision (``quantize: auto``), engine settings and torch threads, driven with the
   worker's calls (``submit``, one ``step`` per turn, ``partial_texts`` for the
   streamed text after each step).
2. **Through the stack**: a Kafka broker, the gateway and the rendezvous with the
   repo's chat policy (deploy/policies/chat.yaml: the OOD gate, then smol), and the
   ood, smol and smol-tight workers as deploy/local/stack.yaml runs them (one
   rendezvous; the archive and compare are not started). The official ``openai``
   client streams (``stream=True``) from ``POST /v1/chat/completions``, model "chat".

Both sides get the same prompts (CLINC150 in-scope training queries that the stack's
OOD detector clears, checked with its runtime before the run), greedy decoding and
``--max-tokens`` (32), at concurrency 1, 4 and 16 (closed loop: every client starts at
once, and sends its next request when its answer ended). Figures per level: time to
first token p50/p99 (sent to the first text), inter-token latency p50/p99 (between
successive pieces of text), tokens/s (completion tokens over the level's wall time).
Through the stack also the median time per hop, from the timestamps the records carry
(bench.chat_e2e_stats.HOPS), the champion's deltas and Produce requests, and the CPU
each process used.

Stack variants, in this order on the same broker (``--variants``): ``shared`` (the
three workers, the challenger at the champion's priority: RDV_WORKER_NICE=0), ``nice``
(the challenger restarted with RDV_WORKER_NICE=``--nice``), ``solo`` (no challenger).
The targets (time to first token p50 at concurrency 1 <= the engine's + 50 ms; tokens/s
at concurrency 16 >= 70% of the engine's) are judged on every variant; ``deployed``
names the one deploy/local/stack.yaml runs (its smol-tight RDV_WORKER_NICE). The machine
is printed first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from typing import Any

from bench.chaos_report import cpu_times, machine
from bench.chat_e2e_stack import (
    CHALLENGER,
    CHAMPION,
    DETECTOR,
    ChatStack,
    deployed_env,
    drive,
    stream_level,
)
from bench.chat_e2e_stats import Stream, figures, hop_medians, prompts
from bench.cost import settle_kafka_counts
from services.common.spec import load_spec
from services.devstack.stack import PROJECT_ROOT
from services.workers.chat_runtime import ChatRuntime, parse_payload, submit
from services.workers.runtime import create_runtime

LEVELS = (1, 4, 16)
VARIANTS = ("shared", "nice", "solo")
TTFT_MARGIN_MS = 50.0
TOKENS_SHARE = 0.7


def champion_runtime() -> ChatRuntime:
    """The smol worker's runtime, loaded from its spec as the worker loads it."""
    spec = load_spec(str(PROJECT_ROOT / "models" / "specs" / f"{CHAMPION}.yaml"))
    runtime = create_runtime(spec.runtime, spec.params)
    if not isinstance(runtime, ChatRuntime):
        raise SystemExit(f"{CHAMPION}'s runtime is {spec.runtime}, not llama-chat")
    runtime.load()
    return runtime


def cleared(texts: list[str], count: int) -> list[str]:
    """The first ``count`` of ``texts`` that the stack's OOD detector clears, scored with
    the detector worker's own runtime and artifact (models/specs/ood.yaml): a flagged
    prompt would get the gate's safe reply through the stack, and no tokens."""
    spec = load_spec(str(PROJECT_ROOT / "models" / "specs" / f"{DETECTOR}.yaml"))
    params = {**spec.params, "artifact": str(PROJECT_ROOT / str(spec.params["artifact"]))}
    runtime = create_runtime(spec.runtime, params)
    runtime.load()
    try:
        scored = runtime.predict_batch(
            [{"messages": [{"role": "user", "content": t}]} for t in texts]
        )
    finally:
        runtime.unload()
    kept = [
        t for t, v in zip(texts, scored, strict=True) if isinstance(v, dict) and not v["is_ood"]
    ]
    if len(kept) < count:
        raise SystemExit(
            f"the OOD detector clears {len(kept)} of {len(texts)} prompts, not {count}"
        )
    return kept[:count]


def engine_level(
    runtime: ChatRuntime, texts: list[str], concurrency: int, count: int, max_tokens: int
) -> tuple[list[Stream], float]:
    """``count`` requests on the engine, ``concurrency`` in flight (closed loop), with
    the chat worker's calls; each request's streamed text timed after every step."""
    chat = runtime.chat
    sent: dict[str, float] = {}
    seen: dict[str, str] = {}
    times: dict[str, list[float]] = {}
    streams: list[Stream] = []
    submitted = 0
    began = time.time()
    while len(streams) < count:
        while submitted < count and len(sent) < concurrency:
            payload = parse_payload(
                {
                    "messages": [{"role": "user", "content": texts[submitted % len(texts)]}],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                    "stream": True,
                }
            )
            rid = submit(chat, payload, runtime.sampling(payload))
            sent[rid], seen[rid], times[rid] = time.time(), "", []
            submitted += 1
        results = chat.step()
        now = time.time()
        for result in results:
            if len(result.text) > len(seen.pop(result.request_id)):
                times[result.request_id].append(now)
            streams.append(
                Stream(
                    sent.pop(result.request_id),
                    tuple(times.pop(result.request_id)),
                    result.completion_tokens,
                    result.request_id,
                )
            )
        for rid, text in chat.partial_texts(list(sent)).items():
            if len(text) > len(seen[rid]):
                seen[rid] = text
                times[rid].append(now)
    return streams, time.time() - began


def engine_alone(texts: list[str], counts: dict[int, int], max_tokens: int) -> dict[str, Any]:
    runtime = champion_runtime()
    report = runtime.chat.loaded.report
    print(
        f"engine: {report.source}, {report.dtype}, quantize {report.quantize}, "
        f"threads {runtime.config.threads}",
        file=sys.stderr,
        flush=True,
    )
    engine_level(runtime, texts, 1, 1, 8)  # warm-up
    out: dict[str, Any] = {"dtype": report.dtype, "quantize": report.quantize}
    for conc in LEVELS:
        streams, took = engine_level(runtime, texts, conc, counts[conc], max_tokens)
        out[str(conc)] = figures(streams, took)
        print(f"engine alone      c{conc:<3} {line(out[str(conc)])}", flush=True)
    runtime.unload()
    gc.collect()
    return out


def line(f: dict[str, float]) -> str:
    return (
        f"ttft p50 {f['ttft_p50_ms']:7.0f} p99 {f['ttft_p99_ms']:7.0f} ms  "
        f"itl p50 {f['itl_p50_ms']:5.0f} p99 {f['itl_p99_ms']:5.0f} ms  "
        f"{f['tokens_per_s']:6.1f} tok/s  ({f['requests']} req, {f['tokens']} tok)"
    )


def warm(stack: ChatStack, texts: list[str]) -> None:
    """Two streamed requests through the stack (first connections, first prefill)."""
    asyncio.run(drive(stack.url, texts, 2, 2, 8))
    settle_kafka_counts()


def run_variant(
    stack: ChatStack, name: str, texts: list[str], counts: dict[int, int], args: Any
) -> dict[str, Any]:
    if name == "shared":
        stack.worker(CHALLENGER, {"RDV_WORKER_NICE": "0"})
    elif name == "nice":
        stack.worker(CHALLENGER, {"RDV_WORKER_NICE": str(args.nice)})
    else:
        stack.drop(CHALLENGER)
    warm(stack, texts)
    out: dict[str, Any] = {}
    for conc in LEVELS:
        level = stream_level(stack, texts, conc, counts[conc], args.max_tokens)
        f = figures(level["streams"], level["took_s"])
        hops = hop_medians(level["marks"])
        out[str(conc)] = {
            **f,
            "failed": level["failed"],
            "hops_ms": hops,
            "counts": level["counts"],
            "cpu_pct_of_core": level["cpu_pct_of_core"],
        }
        failed = json.dumps(level["failed"])
        print(f"stack {name:<6}      c{conc:<3} {line(f)}  failed {failed}", flush=True)
        print(f"  hops (median ms): {json.dumps(hops)}", flush=True)
        print(f"  cpu % of a core: {json.dumps(level['cpu_pct_of_core'])}", flush=True)
        print(f"  counts: {json.dumps(level['counts'])}", flush=True)
    return out


def verdicts(engine: dict[str, Any], stack: dict[str, Any]) -> dict[str, Any]:
    """The gap at each level, and the issue's two targets on each variant."""
    out: dict[str, Any] = {}
    for name, levels in stack.items():
        gaps = {
            str(c): {
                "ttft_p50_extra_ms": round(
                    levels[str(c)]["ttft_p50_ms"] - engine[str(c)]["ttft_p50_ms"], 1
                ),
                "tokens_per_s_share": round(
                    levels[str(c)]["tokens_per_s"] / engine[str(c)]["tokens_per_s"], 3
                ),
            }
            for c in LEVELS
        }
        out[name] = {
            "gap": gaps,
            "ttft_c1_met": gaps["1"]["ttft_p50_extra_ms"] <= TTFT_MARGIN_MS,
            "tokens_c16_met": gaps["16"]["tokens_per_s_share"] >= TOKENS_SHARE,
        }
    return out


def deployed_variant(nice: int) -> str | None:
    """The variant deploy/local/stack.yaml runs: its challenger's nice value."""
    deployed = int(deployed_env(CHALLENGER).get("RDV_WORKER_NICE", "0"))
    return "shared" if deployed == 0 else "nice" if deployed == nice else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chat_e2e")
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="stack variants, in order: shared (ood, smol, smol-tight at nice 0), nice "
        "(smol-tight at RDV_WORKER_NICE=--nice), solo (no smol-tight)",
    )
    parser.add_argument("--nice", type=int, default=10, help="the challenger's nice value")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in VARIANTS for v in variants):
        parser.error(f"--variants: a comma-separated list of {', '.join(VARIANTS)}")
    if args.max_tokens < 2:
        parser.error("--max-tokens must be at least 2 (an inter-token gap needs two)")
    steal0 = cpu_times()
    print("machine:", json.dumps(machine()), flush=True)
    counts = {1: 3, 4: 4, 16: 16} if args.quick else {1: 5, 4: 12, 16: 32}
    texts = cleared(prompts(2 * max(counts.values())), max(counts.values()))
    began = time.monotonic()
    engine = engine_alone(texts, counts, args.max_tokens)
    stack: dict[str, Any] = {}
    with ChatStack() as chat:
        chat.worker(DETECTOR)
        chat.worker(CHAMPION)
        chat.front()
        for name in variants:
            stack[name] = run_variant(chat, name, texts, counts, args)
    out = {
        "max_tokens": args.max_tokens,
        "requests": {str(c): n for c, n in counts.items()},
        "variants": variants,
        "challenger_nice": args.nice,
        "engine": engine,
        "stack": stack,
        "verdicts": verdicts(engine, stack),
        "deployed": deployed_variant(args.nice),
        "targets": {"ttft_c1_extra_ms_at_most": TTFT_MARGIN_MS, "tokens_c16_share": TOKENS_SHARE},
        "seconds": round(time.monotonic() - began, 1),
        "machine": machine(steal0),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Structured outputs from the real chat model: ``python -m bench.structured_output``.

The stack's chat champion (SmolLM2-135M, the engine settings of models/specs/smol.yaml)
answers varied CLINC150 queries (in scope and out of scope, every ``--stride``-th of
the validation split) four ways in one run:

- ``free``: no constraint, asked in the prompt for JSON (the baseline a user tries
  first: how often does the model write valid JSON by itself?);
- ``json_object``: OpenAI's JSON mode (any JSON object), constrained by xgrammar;
- ``json_schema``: a schema with an enum, a bounded string and a number;
- ``tool``: a forced call of a ``set_reminder`` tool, prompted as the gateway prompts
  it (services/gateway/openai/tools.py), arguments held to its parameters.

For each: how many answers parse, how many validate against the schema (jsonschema),
how many were cut by ``--max-tokens``, and the engine's tokens/s for the whole batch
(the masks' cost is the ratio to ``free``). The machine is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import jsonschema

from bench.chaos_report import cpu_times, machine
from models.llama import ChatModel, ChatParams, EngineConfig, GrammarSpec, LoadConfig, load
from models.ood.data import CLINC150_DIR, load_split
from services.gateway.openai.tools import FunctionDef, ToolPlan

INTENT = {
    "type": "object",
    "properties": {
        "topic": {"enum": ["banking", "travel", "cooking", "home", "work", "other"]},
        "summary": {"type": "string", "maxLength": 80},
        "confidence": {"type": "number"},
    },
    "required": ["topic", "summary", "confidence"],
    "additionalProperties": False,
}
REMINDER = FunctionDef(
    name="set_reminder",
    description="remind the user of something at a time",
    parameters={
        "type": "object",
        "properties": {
            "what": {"type": "string", "maxLength": 80},
            "minutes_from_now": {"type": "integer", "minimum": 0, "maximum": 10080},
        },
        "required": ["what", "minutes_from_now"],
        "additionalProperties": False,
    },
)
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def prompts(stride: int, count: int) -> list[str]:
    texts = load_split(CLINC150_DIR, "val").texts
    return list(texts[::stride][:count])


def conversation(system: str, text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def run(
    chat: ChatModel, convs: list[list[dict[str, str]]], params: ChatParams, schema: dict[str, Any]
) -> dict[str, Any]:
    """All conversations through the engine at once; what came back."""
    started = time.perf_counter()
    results = chat.generate(convs, params)
    seconds = time.perf_counter() - started
    parsed = valid = cut = 0
    for result in results:
        cut += result.finish_reason != "stop"
        try:
            doc = json.loads(result.text)
        except ValueError:
            continue
        parsed += 1
        valid += jsonschema.Draft202012Validator(schema).is_valid(doc)
    tokens = sum(r.completion_tokens for r in results)
    return {
        "n": len(results),
        "parsed": parsed,
        "valid": valid,
        "cut": cut,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
        "example": results[0].text[:160],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.structured_output")
    parser.add_argument("--count", type=int, default=100, help="prompts per mode")
    parser.add_argument("--stride", type=int, default=31, help="every n-th CLINC150 val query")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="auto", help="engine dtype (auto: bfloat16 with int8)")
    parser.add_argument("--quantize", default="int8", help="none or int8 (the stack's)")
    args = parser.parse_args(argv)
    steal0 = cpu_times()
    loaded = load(LoadConfig(threads=args.threads, dtype=args.dtype, quantize=args.quantize))
    chat = ChatModel(loaded, EngineConfig(max_batch_size=16, max_batch_tokens=32768))
    texts = prompts(args.stride, args.count)
    print("machine:", json.dumps(machine()), flush=True)
    print(
        f"{len(texts)} CLINC150 val queries, max_tokens {args.max_tokens}, engine "
        f"{loaded.report.dtype} quantize {loaded.report.quantize}, threads {args.threads}",
        flush=True,
    )
    chat.generate([conversation("Reply in JSON.", "Hi")], ChatParams(max_tokens=4))  # warm-up
    tool = ToolPlan((REMINDER,))
    modes = {
        "free": (
            "Reply with a JSON object only.",
            ChatParams(max_tokens=args.max_tokens),
            ANY_OBJECT,
        ),
        "json_object": (
            "Reply with a JSON object only.",
            ChatParams(max_tokens=args.max_tokens, grammar=GrammarSpec("json_object")),
            ANY_OBJECT,
        ),
        "json_schema": (
            "Classify the request: reply in JSON with its topic, a short summary and your "
            "confidence.",
            ChatParams(
                max_tokens=args.max_tokens, grammar=GrammarSpec("json_schema", json.dumps(INTENT))
            ),
            INTENT,
        ),
        "tool": (
            tool.hint(),
            ChatParams(
                max_tokens=args.max_tokens,
                grammar=GrammarSpec("json_schema", json.dumps(tool.schema())),
            ),
            tool.schema(),
        ),
    }
    out: dict[str, Any] = {
        "count": len(texts),
        "max_tokens": args.max_tokens,
        "dtype": loaded.report.dtype,
        "quantize": loaded.report.quantize,
        "modes": {},
    }
    for name, (system, params, schema) in modes.items():
        r = run(chat, [conversation(system, t) for t in texts], params, schema)
        out["modes"][name] = r
        print(
            f"{name:<12} parsed {r['parsed']:>3}/{r['n']}  valid {r['valid']:>3}/{r['n']}  "
            f"cut {r['cut']:>3}  {r['tokens_per_s']:6.1f} tok/s  ({r['tokens']} tokens, "
            f"{r['seconds']:.1f} s)  e.g. {r['example']!r}",
            flush=True,
        )
    free = out["modes"]["free"]["tokens_per_s"]
    for name in ("json_object", "json_schema", "tool"):
        out["modes"][name]["x_free_tokens_per_s"] = out["modes"][name]["tokens_per_s"] / free
    out["machine"] = machine(steal0)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

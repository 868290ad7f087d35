"""ONNX Runtime GenAI as a reference runtime for bench.llm_throughput, on the same prompts.

``prepare`` builds an ONNX model once from the engine's Hugging Face folder (the GGUF's
conversion cache) with onnxruntime-genai's own model builder, offline, into
``.rdv/cache/ort-genai/<precision>/``; ``reference`` then runs greedy generation one
request at a time on the prompt token ids the engine sees (the transformers tokenizer's
chat template), with ``threads`` intra-op threads (the decoder's ``session_options``,
overlaid on its genai_config.json through ``og.Config.overlay``).

Optional: ``uv pip install onnxruntime-genai onnx-ir`` (the ``bench-runtimes`` extra);
without it ``reference`` returns None and the bench says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.one_by_one import one_by_one, timed

MARKER = "rendezvous-build.json"  # written last: its presence means a complete build
Runner = Callable[[list[int], int], tuple[float, float, int]]


def available() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def default_out_dir(precision: str) -> Path:
    return Path(__file__).resolve().parents[1] / ".rdv" / "cache" / "ort-genai" / precision


def builder_command(hf_folder: Path, out: Path, precision: str, cache: Path) -> list[str]:
    """The model builder's command line: a local folder in, the CPU execution provider,
    no Hugging Face token (with HF_HUB_OFFLINE in its environment: no hub at all)."""
    return [
        sys.executable, "-m", "onnxruntime_genai.models.builder",
        "-i", str(hf_folder), "-o", str(out), "-p", precision, "-e", "cpu", "-c", str(cache),
        "--extra_options", "hf_token=false",
    ]  # fmt: skip


def built(out_dir: Path, hf_folder: Path, precision: str) -> dict[str, Any] | None:
    """The marker of a complete build of ``hf_folder`` at ``precision``, else None."""
    try:
        marker = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    same = marker.get("source") == str(hf_folder.resolve()) and marker.get("precision") == precision
    return marker if same and isinstance(marker.get("build_s"), float) else None


def prepare(hf_folder: Path, out_dir: Path | None = None, precision: str = "int4") -> Path:
    """The ONNX model folder of ``hf_folder``, built once (about 15 s for SmolLM2-135M on
    one core); the builder's log stays beside the model as build.log."""
    out_dir = out_dir or default_out_dir(precision)
    if built(out_dir, hf_folder, precision):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".build-") as scratch:
        staging, log = Path(scratch) / "model", Path(scratch) / "build.log"
        started = time.perf_counter()
        cmd = builder_command(hf_folder, staging, precision, Path(scratch) / "cache")
        with log.open("w") as sink:
            rc = subprocess.run(
                cmd, check=False, stdout=sink, stderr=subprocess.STDOUT, env=env
            ).returncode
        took = time.perf_counter() - started
        if rc != 0 or not (staging / "genai_config.json").is_file():
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}):\n{tail}")
        shutil.move(log, staging / "build.log")
        marker = {"source": str(hf_folder.resolve()), "precision": precision, "build_s": took}
        (staging / MARKER).write_text(json.dumps(marker))
        staging.rename(out_dir)
    print(f"ort-genai: built {out_dir} ({precision}) in {took:.1f} s", file=sys.stderr)
    return out_dir


def session_overlay(threads: int) -> dict[str, Any]:
    """The genai_config.json fragment that sets the decoder session's CPU threads."""
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    return {"model": {"decoder": {"session_options": options}}}


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt token ids the engine sees (models.llama.ChatModel.encode)."""
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return [int(t) for t in ids]


def reference(
    model_dir: Path,
    conversations: Sequence[list[dict[str, str]]],
    max_tokens: int,
    threads: int,
    tokenizer: Any,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any] | None:
    """Tokens/s, time to first token and request latency of ORT GenAI on ``model_dir``
    (from ``prepare``), one request at a time; None when it is not installed."""
    if not available():
        return None
    import numpy as np  # noqa: PLC0415
    import onnxruntime_genai as og  # noqa: PLC0415 - optional

    config = og.Config(str(model_dir))
    config.overlay(json.dumps(session_overlay(threads)))
    model = og.Model(config)

    def generator(ids: list[int], limit: int) -> Any:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + limit)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        return gen

    run = _runner(generator, clock)
    prompts = [prompt_ids(tokenizer, m) for m in conversations]
    run(prompts[0], 8)  # warm-up
    figures = one_by_one(run, prompts, max_tokens, clock)
    marker = json.loads((model_dir / MARKER).read_text()) if (model_dir / MARKER).is_file() else {}
    return (
        {"threads": threads}
        | figures
        | {
            "precision": marker.get("precision"),
            "build_s": marker.get("build_s"),
        }
    )


def _runner(generator: Callable[[list[int], int], Any], clock: Callable[[], float]) -> Runner:
    """One greedy generation: (seconds to the first generated token, seconds to the end,
    tokens generated, an end-of-sequence token included, as the engine counts them).
    ``generator`` makes an ORT GenAI generator that has the prompt appended (prefill)."""

    def run(ids: list[int], limit: int) -> tuple[float, float, int]:
        def tokens() -> Iterator[bool]:
            gen = generator(ids, limit)  # appends the prompt: its pass counts
            while not gen.is_done():
                gen.generate_next_token()
                yield True

        return timed(tokens(), clock)

    return run

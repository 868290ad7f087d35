"""Which weight format llama.cpp runs fastest on this machine, chosen by a timed probe.

llama.cpp's kernels differ by CPU and by weight type, so the runtime converts the GGUF
once into candidate formats with llama.cpp's own quantizer (``llama_model_quantize``;
cached beside the model's conversion-cache entry), times a short, fixed mix of one
prompt pass and decode steps alone and in a batch on each, and runs the fastest. The
probe's figures are returned so the worker can log them and put them in its metrics.

``auto`` compares only formats that keep the model's answers: ``f16`` and ``f32``
(greedy answers equal to the float32 torch engine's on bench.llm_throughput's prompts).
llama.cpp's quantized formats (the GGUF's own Q4_1, ``q8_0``) also quantize the
activations in their dot products, and ``bf16`` rounds them: faster on some CPUs, but
they change a 135M model's answers after a few tokens (docs/benchmarks.md), so they
run only when a spec names them.
"""

from __future__ import annotations

import ctypes
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.llama.cpp import library
from models.llama.errors import LlamaError, ModelLoadError

FORMATS: dict[str, int] = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
"""Conversion targets and their llama.cpp file types (LLAMA_FTYPE_*)."""
PROBE_FORMATS = ("f16", "f32")
"""What ``cpp_weights="auto"`` compares: the formats that keep the model's answers."""


def converted(source: Path, kind: str, folder: Path) -> Path:
    """``source`` with its weights in ``kind`` (one of FORMATS), written once into
    ``folder`` (atomically: a temporary file renamed into place)."""
    if kind not in FORMATS:
        raise ModelLoadError(f"unknown llama.cpp weight format {kind!r}; one of {sorted(FORMATS)}")
    llama_cpp = library()
    target = folder / f"{kind}.gguf"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{kind}.{uuid.uuid4().hex}.tmp"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FORMATS[kind]
    params.allow_requantize = True  # the source is quantized: dequantized, then converted
    params.nthread = 1
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(tmp).encode(), ctypes.byref(params)
    )
    if status != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"llama.cpp could not convert {source} to {kind} (status {status})")
    os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class ProbeResult:
    """The chosen format and each candidate's probe time (ms; None: it failed)."""

    chosen: str
    times_ms: dict[str, float | None]

    @property
    def reason(self) -> str:
        figures = ", ".join(
            f"{k} {'failed' if v is None else f'{v:.0f} ms'}" for k, v in self.times_ms.items()
        )
        return f"timed probe: {figures}"


def probe_time(forward: Any, prompt_tokens: int = 32, batch: int = 8, steps: int = 8) -> float:
    """Seconds for a fixed mix on a ``LlamaCppForward``: one prompt of ``prompt_tokens``,
    ``steps`` decode steps alone, then ``steps`` steps of a ``batch``-row batch (the
    best of two rounds; every sequence is released after)."""
    prompt = [(7 * i + 11) % 1000 + 100 for i in range(prompt_tokens)]
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        state, _ = forward.prefill([prompt])
        for _ in range(steps):
            state.next_ids = torch.full((len(state.seqs),), 300, dtype=torch.long)
            forward.decode(state)
        more, _ = forward.prefill([prompt[:4]] * (batch - 1))
        state = forward.merge(state, more)
        for _ in range(steps):
            state.next_ids = torch.full((len(state.seqs),), 300, dtype=torch.long)
            forward.decode(state)
        best = min(best, time.perf_counter() - started)
        forward.reset()
    return best


def choose(
    candidates: Sequence[str],
    make: Callable[[str], Any],
    timer: Callable[[Any], float] = probe_time,
) -> tuple[ProbeResult, Any]:
    """Build each candidate with ``make`` (format -> forward), time it, keep the fastest
    open and close the others; a candidate that fails to build or run is skipped."""
    times: dict[str, float | None] = {}
    best: tuple[float, str, Any] | None = None
    for kind in candidates:
        try:
            forward = make(kind)
            seconds = timer(forward)
        except LlamaError:
            times[kind] = None
            continue
        times[kind] = seconds * 1000
        if best is None or seconds < best[0]:
            if best is not None:
                best[2].close()
            best = (seconds, kind, forward)
        else:
            forward.close()
    if best is None:
        raise ModelLoadError(f"no llama.cpp weight format could run: {times}")
    return ProbeResult(best[1], times), best[2]

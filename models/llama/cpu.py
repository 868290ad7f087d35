"""What this machine runs fast, so the chat engine picks its runtime and precision per
machine. llama.cpp, where installed (``make llama-cpp`` builds it on this CPU, for its
instructions), runs the GGUF's own weights several times faster than torch on CPU
(bench.llm_throughput). With torch, bfloat16 compute (and the int8 decode weights
built on it) pays only where the CPU has bfloat16 instructions (AVX512-BF16 or AMX);
elsewhere, e.g. AVX2-only cloud CPUs, torch emulates bfloat16 and float32 is 2-3x
faster."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (empty where /proc/cpuinfo is not readable)."""
    try:
        with cpuinfo.open() as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class EngineChoice:
    """The precision chosen for this machine and why."""

    quantize: str  # "int8" (bfloat16 compute + int8 decode weights) or "none" (float32)
    reason: str


def choose_quantize(device: str = "cpu", flags: frozenset[str] | None = None) -> EngineChoice:
    """``int8`` where bfloat16 is native (a CUDA device, or a CPU with BF16_FLAGS), else
    ``none``: float32."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return EngineChoice("int8", "cuda")
    found = BF16_FLAGS & (cpu_flags() if flags is None else flags)
    if found:
        return EngineChoice("int8", f"cpu has {', '.join(sorted(found))}")
    return EngineChoice("none", "cpu has no bfloat16 instructions (avx512_bf16, amx_bf16)")


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime chosen for this machine and why."""

    runtime: str  # "torch" or "llama.cpp"
    reason: str


def choose_runtime(
    setting: str, device: str, source: str | None, installed: bool | None = None
) -> RuntimeChoice:
    """``setting`` as given ("torch", "llama.cpp"), or for "auto": llama.cpp on a CPU
    with a GGUF source (``None``: the default GGUF) when llama-cpp-python is installed,
    else torch."""
    if setting != "auto":
        return RuntimeChoice(setting, "set in the spec")
    if installed is None:
        installed = importlib.util.find_spec("llama_cpp") is not None
    if device != "cpu":
        return RuntimeChoice("torch", f"device {device}")
    if source is not None and not source.endswith(".gguf"):
        return RuntimeChoice("torch", "the source is not a GGUF file")
    if not installed:
        return RuntimeChoice("torch", "llama-cpp-python is not installed (make llama-cpp)")
    return RuntimeChoice("llama.cpp", "llama-cpp-python is installed (built for this CPU)")

"""What this CPU runs fast, so the chat engine picks its precision per machine: bfloat16
compute (and the int8 decode weights built on it) pays only where the CPU has bfloat16
instructions (AVX512-BF16 or AMX); elsewhere, e.g. AVX2-only cloud CPUs, torch emulates
bfloat16 and float32 is 2-3x faster (bench.llm_throughput on such a machine)."""

from __future__ import annotations

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

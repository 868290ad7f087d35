"""The chat engine's precision per machine: int8 over bfloat16 only where the CPU has
bfloat16 instructions; float32 on AVX2-only CPUs; flags read from /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

from models.llama.cpu import choose_quantize, cpu_flags

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})


def test_float32_without_bfloat16_instructions() -> None:
    choice = choose_quantize("cpu", AVX2 | {"avx512f", "avx512bw"})
    assert choice.quantize == "none"
    assert "no bfloat16" in choice.reason


def test_int8_with_avx512_bf16_or_amx() -> None:
    assert choose_quantize("cpu", AVX2 | {"avx512_bf16"}).quantize == "int8"
    amx = choose_quantize("cpu", AVX2 | {"amx_bf16", "amx_tile"})
    assert (amx.quantize, amx.reason) == ("int8", "cpu has amx_bf16")


def test_int8_on_cuda_whatever_the_cpu() -> None:
    assert choose_quantize("cuda:0", AVX2).quantize == "int8"


def test_flags_come_from_the_first_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    )
    assert cpu_flags(info) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()

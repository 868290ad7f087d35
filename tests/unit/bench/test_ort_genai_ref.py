"""The ONNX Runtime GenAI reference: the builder's offline command line, the build cache
and its marker, the thread overlay, the engine's prompt ids and what the generation
loop counts (fakes); one end-to-end build and run on a tiny model where
onnxruntime-genai is installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import ort_genai_ref
from bench.ort_genai_ref import (
    MARKER,
    _runner,
    builder_command,
    built,
    prepare,
    prompt_ids,
    session_overlay,
)


def test_the_builder_reads_the_local_folder_for_the_cpu_without_a_token() -> None:
    cmd = builder_command(Path("/hf"), Path("/out"), "int4", Path("/scratch"))
    assert cmd[:3] == [sys.executable, "-m", "onnxruntime_genai.models.builder"]
    flags = dict(zip(cmd[3:-2:2], cmd[4:-2:2], strict=True))
    assert flags == {"-i": "/hf", "-o": "/out", "-p": "int4", "-e": "cpu", "-c": "/scratch"}
    assert cmd[-2:] == ["--extra_options", "hf_token=false"]


def test_the_overlay_sets_the_decoder_session_threads() -> None:
    options = session_overlay(3)["model"]["decoder"]["session_options"]
    assert options == {"intra_op_num_threads": 3, "inter_op_num_threads": 1}


def write_marker(out: Path, source: Path, precision: str = "int4") -> None:
    out.mkdir(parents=True)
    marker = {"source": str(source.resolve()), "precision": precision, "build_s": 1.5}
    (out / MARKER).write_text(json.dumps(marker))


def test_a_build_counts_only_for_its_source_and_precision(tmp_path: Path) -> None:
    out, hf = tmp_path / "int4", tmp_path / "hf"
    assert built(out, hf, "int4") is None  # nothing there
    write_marker(out, hf)
    assert built(out, hf, "int4") == {
        "source": str(hf.resolve()),
        "precision": "int4",
        "build_s": 1.5,
    }
    assert built(out, tmp_path / "other", "int4") is None
    assert built(out, hf, "int8") is None
    (out / MARKER).write_text("{not json")
    assert built(out, hf, "int4") is None


def no_builder(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the builder ran")


def test_a_complete_build_is_not_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, hf = tmp_path / "int4", tmp_path / "hf"
    write_marker(out, hf)
    monkeypatch.setattr(subprocess, "run", no_builder)
    assert prepare(hf, out) == out


class FakeBuilder:
    """Stands in for the builder's process: writes the model folder (or fails)."""

    def __init__(self, rc: int = 0) -> None:
        self.rc = rc
        self.env: dict[str, str] = {}

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.env = kwargs["env"]
        kwargs["stdout"].write("Reading layer 0\n" if self.rc == 0 else "Traceback: boom\n")
        if self.rc == 0:
            out = Path(cmd[cmd.index("-o") + 1])
            out.mkdir(parents=True)
            (out / "genai_config.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, self.rc)


def test_a_build_lands_whole_with_its_marker_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, hf = tmp_path / "cache" / "int4", tmp_path / "hf"
    fake = FakeBuilder()
    monkeypatch.setattr(subprocess, "run", fake)
    assert prepare(hf, out) == out
    assert fake.env["HF_HUB_OFFLINE"] == "1"  # never the hub
    assert (out / "genai_config.json").is_file()
    assert "Reading layer 0" in (out / "build.log").read_text()
    assert built(out, hf, "int4") is not None
    assert sorted(p.name for p in out.parent.iterdir()) == ["int4"]  # no scratch left


def test_a_failed_build_says_why_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cache" / "int4"
    monkeypatch.setattr(subprocess, "run", FakeBuilder(rc=1))
    with pytest.raises(RuntimeError, match=r"exit 1\):\nTraceback: boom"):
        prepare(tmp_path / "hf", out)
    assert list(out.parent.iterdir()) == []


class FakeTokenizer:
    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
        self.kwargs = kwargs
        return [1, 2, len(messages)]


def test_prompts_are_the_engines_chat_template_ids() -> None:
    tokenizer = FakeTokenizer()
    assert prompt_ids(tokenizer, [{"role": "user", "content": "hi"}]) == [1, 2, 1]
    assert tokenizer.kwargs["add_generation_prompt"] is True
    assert tokenizer.kwargs["tokenize"] is True


class FakeGenerator:
    """Generates ``n`` tokens, one clock tick of 10 each; the prompt costs 5."""

    def __init__(self, n: int, now: list[float]) -> None:
        self.left, self.now = n, now
        now[0] += 5.0

    def is_done(self) -> bool:
        return self.left == 0

    def generate_next_token(self) -> None:
        self.now[0] += 10.0
        self.left -= 1


def test_first_token_end_and_count() -> None:
    now = [0.0]
    calls: list[tuple[list[int], int]] = []

    def generator(ids: list[int], limit: int) -> FakeGenerator:
        calls.append((ids, limit))
        return FakeGenerator(3, now)

    run = _runner(generator, clock=lambda: now[0])
    assert run([7, 8], 32) == (15.0, 35.0, 3)
    assert calls == [([7, 8], 32)]
    assert _runner(lambda ids, limit: FakeGenerator(0, now), lambda: now[0])([7], 4)[2] == 0


def tiny_gqa_model() -> Any:
    """The chat tests' tiny LLaMA, with heads of 16 (ORT's GroupQueryAttention on the CPU
    needs a multiple of 16) and sizes that int4 blocks of 32 divide."""
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    from tests.unit.models.test_llama_chat import VOCAB  # noqa: PLC0415

    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.skipif(
    not ort_genai_ref.available(),
    reason="onnxruntime-genai is not installed (the bench-runtimes extra)",
)
def test_a_tiny_model_builds_offline_and_generates(tmp_path: Path) -> None:
    from tests.unit.models.test_llama_chat import tiny_tokenizer  # noqa: PLC0415

    hf = tmp_path / "tiny"
    tiny_gqa_model().save_pretrained(hf)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(hf)
    model_dir = prepare(hf, tmp_path / "ort" / "int4")
    conversations = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    r = ort_genai_ref.reference(model_dir, conversations, 6, 1, tokenizer)
    assert r is not None
    assert r["requests"] == 2
    assert 2 <= r["tokens"] <= 12  # an end of sequence may come early
    assert r["precision"] == "int4"
    assert r["build_s"] > 0
    assert 0 < r["ttft_p50_s"] <= r["latency_p50_s"]

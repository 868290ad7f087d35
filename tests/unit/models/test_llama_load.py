"""Loading: Hugging Face folders, typed errors, and the GGUF conversion cache.

The GGUF conversion itself (transformers' dequantizer) is exercised on the real
SmolLM2 file in tests/integration/test_llama_smollm2.py; here ``convert_gguf`` is
replaced by one that returns the tiny model, so the cache logic runs in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf import GGUFWriter
from transformers import GPT2Config, LlamaForCausalLM, PreTrainedTokenizerBase

from models.llama import (
    LoadConfig,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
    default_cache_root,
    load,
    loader,
)
from models.llama import cache as cache_module
from tests.unit.models.test_llama_chat import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


class FakeConverter:
    """Stands in for ``convert_gguf``: counts calls, returns the tiny model."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
        self.calls += 1
        return tiny_model(), tiny_tokenizer()


@pytest.fixture
def converter(monkeypatch: pytest.MonkeyPatch) -> FakeConverter:
    fake = FakeConverter()
    monkeypatch.setattr(loader, "convert_gguf", fake)
    return fake


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF stand-in " * 64)
    return path


def write_gguf_header(path: Path, architecture: str) -> Path:
    writer = GGUFWriter(str(path), architecture)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_hugging_face_folder_loads_on_cpu(tiny_folder: Path) -> None:
    loaded = load(LoadConfig(source=tiny_folder, device="cpu"))
    assert isinstance(loaded.model, LlamaForCausalLM)
    assert not loaded.model.training
    assert loaded.tokenizer.chat_template is not None
    assert loaded.context_window == 128
    report = loaded.report
    assert (report.kind, report.cache_hit, report.device, report.dtype) == (
        "folder",
        None,
        "cpu",
        "torch.float32",
    )


def test_dtype_can_be_chosen(tiny_folder: Path) -> None:
    loaded = load(LoadConfig(source=tiny_folder, device="cpu", dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only case")
def test_cuda_without_a_gpu_is_a_typed_error(tiny_folder: Path) -> None:
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load(LoadConfig(source=tiny_folder, device="cuda"))
    assert load(LoadConfig(source=tiny_folder, device="auto")).report.device == "cpu"


def test_missing_source_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        load(LoadConfig(source=tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        load(LoadConfig(source=tmp_path))


def test_a_non_llama_folder_is_refused(tmp_path: Path) -> None:
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        load(LoadConfig(source=tmp_path))


def test_a_folder_with_broken_weights_is_a_load_error(tiny_folder: Path) -> None:
    (tiny_folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError):
        load(LoadConfig(source=tiny_folder))


def test_a_non_llama_gguf_is_refused(tmp_path: Path) -> None:
    path = write_gguf_header(tmp_path / "gpt2.gguf", "gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        load(LoadConfig(source=path, cache_root=tmp_path / "cache"))


def test_a_file_that_is_not_gguf_is_a_load_error(gguf_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        load(LoadConfig(source=gguf_file, cache_root=tmp_path / "cache"))


def test_gguf_is_converted_once_then_loaded_from_the_cache(
    gguf_file: Path, tmp_path: Path, converter: FakeConverter, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = LoadConfig(source=gguf_file, cache_root=tmp_path / "cache")
    first = load(config)
    assert (first.report.cache_hit, converter.calls) == (False, 1)
    entry = first.report.folder
    assert entry.parent == tmp_path / "cache"
    marker = json.loads((entry / cache_module.MARKER).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= marker["files"].keys()

    def must_not_read(path: Path) -> str:
        raise AssertionError(f"the cached load read {path}")

    monkeypatch.setattr(cache_module, "file_sha256", must_not_read)
    second = load(config)
    assert (second.report.cache_hit, second.report.folder, converter.calls) == (True, entry, 1)
    assert torch.equal(second.model.lm_head.weight, first.model.lm_head.weight)


def test_a_changed_gguf_file_gets_a_new_entry(
    gguf_file: Path, tmp_path: Path, converter: FakeConverter
) -> None:
    config = LoadConfig(source=gguf_file, cache_root=tmp_path / "cache")
    first = load(config)
    gguf_file.write_bytes(b"another model " * 64)
    second = load(config)
    assert second.report.folder != first.report.folder
    assert converter.calls == 2


@pytest.mark.parametrize("damage", ["truncate", "garble", "unmark"])
def test_a_corrupt_cache_entry_is_rebuilt(
    gguf_file: Path, tmp_path: Path, converter: FakeConverter, damage: str
) -> None:
    config = LoadConfig(source=gguf_file, cache_root=tmp_path / "cache")
    entry = load(config).report.folder
    weights = entry / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garble":  # same size, so only loading it can tell
        weights.write_bytes(b"\xff" * weights.stat().st_size)
    else:
        (entry / cache_module.MARKER).unlink()
    again = load(config)
    assert (again.report.cache_hit, again.report.folder, converter.calls) == (False, entry, 2)
    assert load(config).report.cache_hit is True


def test_the_default_cache_is_git_ignored_under_the_repo() -> None:
    assert default_cache_root() == REPO / ".rdv" / "cache" / "models"
    assert ".rdv/" in (REPO / ".gitignore").read_text().split()

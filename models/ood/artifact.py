"""A fitted detector on disk: reference statistics, threshold, and their provenance.

An artifact is a folder of two files:

``statistics.safetensors``
    The scorer's arrays (reference embeddings, whitening matrices, class means...).
``artifact.json``
    Format, version, method and hyperparameters, threshold and the share of
    in-distribution inputs it keeps, the encoder (name, hashes of weights and config,
    pooling) and the data (hashes and sizes of the reference and calibration sets),
    and the hash of the statistics file.

``version`` is a content hash: two artifacts with the same version score alike.
Loading checks the format and the statistics' hash (``ArtifactError``);
``check_encoder`` compares the recorded encoder with the one at hand
(``ArtifactMismatchError``, which names every field that differs).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from models.ood.encoding import EncoderInfo, file_sha256
from models.ood.scoring import Array, Scorer, ScorerConfig, build_scorer

FORMAT = 1
META_FILE = "artifact.json"
ARRAYS_FILE = "statistics.safetensors"


class OodError(Exception):
    """Base of the out-of-distribution detector's errors."""


class ArtifactError(OodError):
    """An artifact that cannot be used: missing, unreadable, corrupt or too new."""


class ArtifactMismatchError(ArtifactError):
    """An artifact fitted on another encoder (or pooling) than the one it is used with."""

    def __init__(self, differences: dict[str, tuple[object, object]]) -> None:
        self.differences = differences
        parts = [f"{k}: artifact has {a!r}, encoder has {b!r}" for k, (a, b) in differences.items()]
        super().__init__("artifact does not match the encoder: " + "; ".join(parts))


@dataclass(frozen=True)
class DataInfo:
    """The data an artifact was fitted (reference) and calibrated on."""

    reference_sha256: str
    reference_size: int
    n_classes: int
    calibration_sha256: str
    calibration_size: int


@dataclass(frozen=True)
class OodArtifact:
    """Everything a detector needs besides the encoder itself."""

    scorer: ScorerConfig
    threshold: float
    keep: float
    encoder: EncoderInfo
    data: DataInfo
    arrays: dict[str, Array] = field(repr=False)
    version: str = ""  # set by save/load: a hash of the content
    created_at: str = ""

    def build_scorer(self) -> Scorer:
        """The fitted scorer these statistics describe."""
        try:
            scorer = build_scorer(self.scorer).load_state(self.arrays)
        except KeyError as exc:
            raise ArtifactError(f"{ARRAYS_FILE} lacks the array {exc}") from None
        if scorer.dim != self.encoder.dim:
            raise ArtifactError(f"statistics have dim {scorer.dim}, encoder {self.encoder.dim}")
        return scorer

    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "created_at": self.created_at,
            "method": self.scorer.method,
            "scorer": self.scorer.as_dict(),
            "threshold": self.threshold,
            "keep": self.keep,
            "encoder": self.encoder.as_dict(),
            "data": {f.name: getattr(self.data, f.name) for f in fields(DataInfo)},
        }


def check_encoder(artifact: OodArtifact, encoder: EncoderInfo) -> None:
    """Raise ``ArtifactMismatchError`` naming each encoder field that differs."""
    ours, theirs = artifact.encoder.as_dict(), encoder.as_dict()
    differences = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    if differences:
        raise ArtifactMismatchError(differences)


def _content_version(meta: dict[str, Any], arrays_sha256: str) -> str:
    stable = {k: v for k, v in meta.items() if k not in ("version", "created_at")}
    blob = json.dumps(stable, sort_keys=True).encode() + arrays_sha256.encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_artifact(artifact: OodArtifact, directory: str | Path) -> OodArtifact:
    """Write the artifact's two files; returns it with ``version`` and ``created_at``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in artifact.arrays.items()}, out / ARRAYS_FILE)
    arrays_sha256 = file_sha256(out / ARRAYS_FILE)
    meta = artifact.meta()
    version = _content_version(meta, arrays_sha256)
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    meta |= {"version": version, "created_at": created_at, "arrays_sha256": arrays_sha256}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return replace(artifact, version=version, created_at=created_at)


def load_artifact(directory: str | Path) -> OodArtifact:
    """Read an artifact folder; ``ArtifactError`` says what is wrong with it."""
    src = Path(directory)
    try:
        meta = json.loads((src / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{src} is not an artifact: no {META_FILE}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{src / META_FILE} is unreadable: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{src} has format {meta.get('format')!r}; this build reads {FORMAT}")
    if not (src / ARRAYS_FILE).is_file():
        raise ArtifactError(f"{src} has no {ARRAYS_FILE}")
    if file_sha256(src / ARRAYS_FILE) != meta.get("arrays_sha256"):
        raise ArtifactError(f"{src / ARRAYS_FILE} does not match the hash in {META_FILE}")
    try:
        enc = dict(meta["encoder"])
        enc["layers"] = tuple(enc["layers"])
        return OodArtifact(
            scorer=ScorerConfig(**meta["scorer"]),
            threshold=float(meta["threshold"]),
            keep=float(meta["keep"]),
            encoder=EncoderInfo(**enc),
            data=DataInfo(**meta["data"]),
            arrays=dict(load_file(src / ARRAYS_FILE)),
            version=str(meta["version"]),
            created_at=str(meta.get("created_at", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{src / META_FILE} is invalid: {exc!r}") from None

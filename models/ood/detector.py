"""The detector: an encoder, a fitted scorer and a calibrated threshold.

``fit_artifact`` fits a scorer on reference embeddings and calibrates its threshold
on held-out in-distribution embeddings; ``OodDetector`` scores texts with an artifact
after checking that the encoder at hand is the one the artifact was fitted with.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.ood.artifact import DataInfo, OodArtifact, check_encoder
from models.ood.calibrate import DEFAULT_KEEP, threshold_for_keep
from models.ood.data import Split
from models.ood.encoding import EncoderInfo
from models.ood.scoring import Array, ScorerConfig, build_scorer

Progress = Callable[[int, int], None]


class Embedder(Protocol):
    """What the detector needs of an encoder (``embed.Encoder``, or a fake in tests)."""

    @property
    def info(self) -> EncoderInfo: ...

    def encode(self, texts: Sequence[str], progress: Progress | None = None) -> Array: ...


@dataclass(frozen=True)
class OodResult:
    """One input's verdict: its score and whether it is above the threshold."""

    score: float
    is_ood: bool


class OodDetector:
    """Scores texts against an artifact's reference statistics."""

    def __init__(self, encoder: Embedder, artifact: OodArtifact) -> None:
        check_encoder(artifact, encoder.info)
        self.encoder = encoder
        self.artifact = artifact
        self.scorer = artifact.build_scorer()
        self.threshold = artifact.threshold

    @property
    def method(self) -> str:
        return self.artifact.scorer.method

    def score(self, texts: Sequence[str]) -> Array:
        """(n,) scores; higher is further from the reference."""
        return self.scorer.score(self.encoder.encode(texts))

    def predict(self, texts: Sequence[str]) -> list[OodResult]:
        return [OodResult(float(s), bool(s > self.threshold)) for s in self.score(texts)]


def data_info(reference: Split, calibration: Split) -> DataInfo:
    return DataInfo(
        reference_sha256=reference.sha256(),
        reference_size=len(reference),
        n_classes=len(set(reference.intents)),
        calibration_sha256=calibration.sha256(),
        calibration_size=len(calibration),
    )


def fit_artifact(
    *,
    config: ScorerConfig,
    encoder: EncoderInfo,
    reference: tuple[Array, Sequence[str]],
    calibration: Array,
    data: DataInfo,
    keep: float = DEFAULT_KEEP,
) -> OodArtifact:
    """Fit ``config``'s scorer on reference (embeddings (n, d), labels (n,)) and set the
    threshold that keeps ``keep`` of the calibration embeddings (m, d)."""
    x, labels = reference
    if x.shape[1] != encoder.dim or calibration.shape[1] != encoder.dim:
        raise ValueError(f"embeddings must have the encoder's dim {encoder.dim}")
    scorer = build_scorer(config).fit(x, labels)
    threshold = threshold_for_keep(scorer.score(calibration), keep)
    return OodArtifact(
        scorer=config,
        threshold=threshold,
        keep=keep,
        encoder=encoder,
        data=data,
        arrays=scorer.state(),
    )


def stderr_progress(label: str, every: int = 20) -> Progress:
    """A progress callback writing a line to stderr every ``every`` batches and at the end,
    with the seconds since the callback was made."""
    state = {"calls": 0}
    began = time.monotonic()

    def report(done: int, total: int) -> None:
        state["calls"] += 1
        if state["calls"] % every == 0 or done >= total:
            took = time.monotonic() - began
            print(f"{label}: embedded {done}/{total} ({took:.0f} s)", file=sys.stderr, flush=True)

    return report


def embed_split(encoder: Embedder, split: Split, cache_dir: str | Path | None = None) -> Array:
    """Embeddings of ``split.texts``, read from / written to ``cache_dir`` when given
    (keyed by the encoder's fingerprint and pooling and by the split's hash)."""
    progress = stderr_progress(split.name or "texts")
    if cache_dir is None:
        return encoder.encode(split.texts, progress)
    key_src = repr(sorted(encoder.info.as_dict().items())) + split.sha256()
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    path = Path(cache_dir) / f"emb-{key}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (len(split), encoder.info.dim):
            return np.asarray(cached, dtype=np.float32)
    x = encoder.encode(split.texts, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, x)
    tmp.replace(path)
    return x

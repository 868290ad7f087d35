"""Out-of-distribution detection for text: distance from an in-distribution reference.

A frozen sentence encoder (``embed``: MiniLM via transformers, offline) turns texts
into vectors; a scorer (``scoring``: k-NN cosine distance, relative Mahalanobis
distance with per-class means, or their z-normalised sum) measures how far a vector
is from the reference; a threshold calibrated on held-out in-distribution data
(``calibrate``) makes the verdict. ``artifact`` saves and loads a fitted detector and
refuses one fitted with another encoder; ``python -m models.ood`` fits and evaluates.
"""

from models.ood.artifact import (
    ArtifactError,
    ArtifactMismatchError,
    DataInfo,
    OodArtifact,
    OodError,
    check_encoder,
    load_artifact,
    save_artifact,
)
from models.ood.calibrate import OodMetrics, auroc, evaluate, fpr_at_keep, threshold_for_keep
from models.ood.data import Split, load_split
from models.ood.detector import OodDetector, OodResult, fit_artifact
from models.ood.encoding import EncoderConfig, EncoderInfo, fingerprint
from models.ood.scoring import METHODS, ScorerConfig, build_scorer

__all__ = [
    "METHODS",
    "ArtifactError",
    "ArtifactMismatchError",
    "DataInfo",
    "EncoderConfig",
    "EncoderInfo",
    "OodArtifact",
    "OodDetector",
    "OodError",
    "OodMetrics",
    "OodResult",
    "ScorerConfig",
    "Split",
    "auroc",
    "build_scorer",
    "check_encoder",
    "evaluate",
    "fingerprint",
    "fit_artifact",
    "fpr_at_keep",
    "load_artifact",
    "load_split",
    "save_artifact",
    "threshold_for_keep",
]

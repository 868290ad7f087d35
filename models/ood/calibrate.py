"""Thresholds and the figures that judge a detector.

An input is out of distribution when its score is above the threshold. The threshold
is calibrated on held-out in-distribution scores alone, for a chosen share of them to
be kept (default 95%): no out-of-distribution data is needed to set it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

Scores = npt.NDArray[np.floating]
DEFAULT_KEEP = 0.95


def threshold_for_keep(in_scores: Scores, keep: float = DEFAULT_KEEP) -> float:
    """The smallest observed score that keeps at least ``keep`` of ``in_scores``
    (kept: score <= threshold)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], not {keep}")
    if len(in_scores) == 0:
        raise ValueError("no in-distribution scores to calibrate on")
    ordered = np.sort(np.asarray(in_scores, dtype=np.float64))
    rank = int(np.ceil(keep * len(ordered) - 1e-9)) - 1  # 0-based: ceil(keep * n) kept
    return float(ordered[max(rank, 0)])


def auroc(in_scores: Scores, out_scores: Scores) -> float:
    """P(an out score > an in score), ties counted half (the Mann-Whitney statistic)."""
    if len(in_scores) == 0 or len(out_scores) == 0:
        raise ValueError("AUROC needs both in- and out-of-distribution scores")
    ordered = np.sort(np.asarray(in_scores, dtype=np.float64))
    out = np.asarray(out_scores, dtype=np.float64)
    below = np.searchsorted(ordered, out, side="left")  # in scores < each out score
    not_above = np.searchsorted(ordered, out, side="right")  # in scores <= it
    return float((below + not_above).sum() / (2.0 * len(ordered) * len(out)))


def accepted_share(scores: Scores, threshold: float) -> float:
    """Share of ``scores`` kept as in-distribution at ``threshold``."""
    return float(np.mean(np.asarray(scores) <= threshold)) if len(scores) else float("nan")


def fpr_at_keep(in_scores: Scores, out_scores: Scores, keep: float = DEFAULT_KEEP) -> float:
    """Share of out-of-distribution inputs accepted when the threshold keeps ``keep``
    of the in-distribution ones (FPR@95 for keep=0.95, OOD as the positive class)."""
    return accepted_share(out_scores, threshold_for_keep(in_scores, keep))


@dataclass(frozen=True)
class OodMetrics:
    """How well scores separate in- from out-of-distribution inputs."""

    auroc: float
    fpr_at_95: float  # out-of-distribution accepted when 95% of in-distribution is kept
    caught: float  # out-of-distribution rejected at the calibrated threshold
    kept: float  # in-distribution accepted at the calibrated threshold
    threshold: float
    n_in: int
    n_out: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate(in_scores: Scores, out_scores: Scores, threshold: float) -> OodMetrics:
    """The figures of a detector with ``threshold`` on labelled scores."""
    return OodMetrics(
        auroc=auroc(in_scores, out_scores),
        fpr_at_95=fpr_at_keep(in_scores, out_scores, 0.95),
        caught=1.0 - accepted_share(out_scores, threshold),
        kept=accepted_share(in_scores, threshold),
        threshold=threshold,
        n_in=len(in_scores),
        n_out=len(out_scores),
    )

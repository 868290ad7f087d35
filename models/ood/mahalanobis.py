"""Relative Mahalanobis distance (Ren et al., 2021) with per-class means.

Each in-distribution class c gets its mean mu_c; all classes share one within-class
covariance S. The background is one Gaussian over all reference points (mu_0, S_0).
The score of x is ``min_c MD_c(x) - MD_0(x)``: how much closer x is to its nearest
class than to the data as a whole. Subtracting the background removes the part of
the distance that every input pays along directions of little class information.

Both precisions are stored as whitening matrices W with W W^T = (S + ridge)^-1, so a
distance is one matmul and a squared norm. The maths runs in torch (on torch's thread
pool, the encoder's): numpy's BLAS would bring a second pool that fights it for cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import numpy.typing as npt
import torch

Array = npt.NDArray[np.float32]
STATE = ("w", "means_w", "means_sq", "w0", "mu0")


def whitener(centred: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """W (d, d) with W W^T = (cov + shrinkage * mean(eigenvalues) * I)^-1; float64 in."""
    cov = centred.T @ centred / max(len(centred), 1)  # (d, d)
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp(min=0.0)
    ridge = shrinkage * max(float(values.mean()), 1e-12)
    w: torch.Tensor = vectors / torch.sqrt(values + ridge)  # (d, d): column j / sqrt(l_j)
    return w


class RelativeMahalanobis:
    """Per-class means, one shared covariance, minus the background distance."""

    method = "relmaha"

    def __init__(self, shrinkage: float = 1e-4) -> None:
        self.shrinkage = shrinkage
        self.w = torch.zeros(0, 0)  # (d, d) class whitening
        self.means_w = torch.zeros(0, 0)  # (C, d) whitened class means
        self.means_sq = torch.zeros(0)  # (C,) their squared norms
        self.w0 = torch.zeros(0, 0)  # (d, d) background whitening
        self.mu0 = torch.zeros(0)  # (d,) background mean

    @property
    def dim(self) -> int:
        return int(self.w.shape[0])

    @torch.inference_mode()
    def fit(self, x: Array, labels: Sequence[str]) -> Self:
        """Fit on reference embeddings x (n, d) with their class labels (n,)."""
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
        classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
        if len(classes) < 2:
            raise ValueError("relative Mahalanobis needs at least two classes")
        xf = torch.from_numpy(np.asarray(x, dtype=np.float64))  # (n, d)
        index = torch.from_numpy(inverse.reshape(-1))  # (n,)
        counts = torch.bincount(index, minlength=len(classes)).to(xf.dtype)  # (C,)
        sums = torch.zeros(len(classes), xf.shape[1], dtype=xf.dtype).index_add_(0, index, xf)
        means = sums / counts[:, None]  # (C, d)
        w = whitener(xf - means[index], self.shrinkage)
        mu0 = xf.mean(dim=0)  # (d,)
        means_w = means @ w  # (C, d)
        self.w, self.means_w = w.float(), means_w.float()
        self.means_sq = (means_w**2).sum(dim=1).float()
        self.w0, self.mu0 = whitener(xf - mu0, self.shrinkage).float(), mu0.float()
        return self

    @torch.inference_mode()
    def score(self, x: Array) -> Array:
        """(n,) scores for embeddings x (n, d); higher is further from the reference."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # (n, d)
        z = xt @ self.w  # (n, d)
        d_class = (z * z).sum(1, keepdim=True) - 2.0 * (z @ self.means_w.T) + self.means_sq
        z0 = (xt - self.mu0) @ self.w0  # (n, d)
        scores = d_class.min(dim=1).values - (z0 * z0).sum(dim=1)  # (n,)
        return np.asarray(scores.numpy(), dtype=np.float32)

    def state(self) -> dict[str, Array]:
        return {name: getattr(self, name).numpy() for name in STATE}

    def load_state(self, arrays: dict[str, Array]) -> Self:
        for name in STATE:
            array = np.ascontiguousarray(arrays[name], dtype=np.float32)
            setattr(self, name, torch.from_numpy(array))
        return self

"""Out-of-distribution scores: distance of an embedding from an in-distribution reference.

Every scorer is fitted on reference embeddings (n, d) and their class labels, and maps
embeddings to scores (n,) where higher means further from the reference:

``knn``
    Cosine distance to the k-th nearest reference embedding (Sun et al., 2022).
``relmaha``
    Relative Mahalanobis distance to the nearest class (see ``mahalanobis``).
``combined``
    The z-normalised sum of the two. The z statistics come from the reference itself
    (a seeded sample: k-NN leaving each point out, relmaha in-sample), so a fitted
    scorer needs no other data. The two distances disagree on different inputs (kNN
    on sparse regions of one class, relmaha on directions of little class variance),
    so their sum ranks better than either.

The matmuls run in torch, on the thread pool the encoder uses: numpy's BLAS would
start a second pool whose spinning threads starve the encoder's (10x slower requests
on a 2-core machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol, Self, get_args

import numpy as np
import numpy.typing as npt
import torch

from models.ood.mahalanobis import RelativeMahalanobis

Array = npt.NDArray[np.float32]
Method = Literal["knn", "relmaha", "combined"]
METHODS: tuple[Method, ...] = get_args(Method)
CHUNK = 1024  # query rows per similarity matmul: (CHUNK, n_reference) floats at a time


@dataclass(frozen=True)
class ScorerConfig:
    """The scoring method and its hyperparameters (recorded in the artifact)."""

    method: Method = "combined"
    k: int = 5  # k-NN: the k-th nearest neighbour's distance
    shrinkage: float = 1e-4  # relmaha: ridge added to the covariances, x mean eigenvalue
    znorm_sample: int = 2000  # combined: reference points used for the z statistics
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.k < 1 or self.shrinkage < 0 or self.znorm_sample < 2:
            raise ValueError(f"invalid scorer config: {self}")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Scorer(Protocol):
    """What the detector needs of a fitted scoring method."""

    method: str

    @property
    def dim(self) -> int: ...

    def fit(self, x: Array, labels: Sequence[str]) -> Self: ...

    def score(self, x: Array) -> Array: ...

    def state(self) -> dict[str, Array]: ...

    def load_state(self, arrays: dict[str, Array]) -> Self: ...


def unit_rows(x: Array) -> Array:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: Array = np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
    return unit


class KnnScorer:
    """1 - cosine similarity to the k-th nearest reference embedding."""

    method = "knn"

    def __init__(self, k: int = 5) -> None:
        self.k = k
        self.reference_t = torch.zeros(0, 0)  # (d, n) unit columns: the fast layout to read

    @property
    def dim(self) -> int:
        return int(self.reference_t.shape[0])

    def fit(self, x: Array, labels: Sequence[str]) -> Self:
        if len(x) <= self.k:
            raise ValueError(f"k-NN with k={self.k} needs more than {self.k} reference points")
        self.reference_t = torch.from_numpy(unit_rows(x)).T.contiguous()
        return self

    @torch.inference_mode()
    def score(self, x: Array, *, leave_one_out: bool = False) -> Array:
        """Scores (n,); with ``leave_one_out`` x are reference rows and skip themselves."""
        rank = self.k + 1 if leave_one_out else self.k  # rank 1 of a reference row is itself
        q = torch.from_numpy(unit_rows(x))  # (n, d)
        out = torch.empty(len(q))
        for start in range(0, len(q), CHUNK):
            sims = q[start : start + CHUNK] @ self.reference_t  # (chunk, n_reference)
            kth = torch.topk(sims, rank, dim=1).values[:, rank - 1]  # (chunk,)
            out[start : start + CHUNK] = 1.0 - kth
        return np.asarray(out.numpy(), dtype=np.float32)

    def state(self) -> dict[str, Array]:
        return {"reference": np.ascontiguousarray(self.reference_t.T.numpy())}  # (n, d)

    def load_state(self, arrays: dict[str, Array]) -> Self:
        reference = np.asarray(arrays["reference"], dtype=np.float32)  # (n, d)
        self.reference_t = torch.from_numpy(np.ascontiguousarray(reference.T))
        return self


class CombinedScorer:
    """z(kNN) + z(relmaha), with z statistics measured on the reference."""

    method = "combined"

    def __init__(self, config: ScorerConfig) -> None:
        self.config = config
        self.knn = KnnScorer(config.k)
        self.relmaha = RelativeMahalanobis(config.shrinkage)
        self.znorm = np.array([0.0, 1.0, 0.0, 1.0], dtype=np.float32)  # knn mean, std, rel..

    @property
    def dim(self) -> int:
        return self.knn.dim

    def fit(self, x: Array, labels: Sequence[str]) -> Self:
        self.knn.fit(x, labels)
        self.relmaha.fit(x, labels)
        rng = np.random.default_rng(self.config.seed)
        pick = rng.choice(len(x), size=min(self.config.znorm_sample, len(x)), replace=False)
        knn_ref = self.knn.score(x[pick], leave_one_out=True)
        rel_ref = self.relmaha.score(x[pick])
        stds = [max(float(s.std()), 1e-12) for s in (knn_ref, rel_ref)]
        self.znorm = np.array([knn_ref.mean(), stds[0], rel_ref.mean(), stds[1]], dtype=np.float32)
        return self

    def score(self, x: Array) -> Array:
        m1, s1, m2, s2 = (float(v) for v in self.znorm)
        z = (self.knn.score(x) - m1) / s1 + (self.relmaha.score(x) - m2) / s2
        return z.astype(np.float32)

    def state(self) -> dict[str, Array]:
        arrays = {f"knn.{k}": v for k, v in self.knn.state().items()}
        arrays |= {f"relmaha.{k}": v for k, v in self.relmaha.state().items()}
        return arrays | {"znorm": self.znorm}

    def load_state(self, arrays: dict[str, Array]) -> Self:
        self.knn.load_state({k[4:]: v for k, v in arrays.items() if k.startswith("knn.")})
        self.relmaha.load_state({k[8:]: v for k, v in arrays.items() if k.startswith("relmaha.")})
        self.znorm = np.asarray(arrays["znorm"], dtype=np.float32)
        return self


def build_scorer(config: ScorerConfig) -> Scorer:
    """An unfitted scorer for ``config.method``."""
    if config.method == "knn":
        return KnnScorer(config.k)
    if config.method == "relmaha":
        return RelativeMahalanobis(config.shrinkage)
    return CombinedScorer(config)

"""The OOD detector on small synthetic data: scorers, calibration, artifacts, runtime.

No encoder weights are loaded: embeddings are Gaussian clusters and the encoder is a
fake with a fixed fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.ood.artifact import (
    ARRAYS_FILE,
    META_FILE,
    ArtifactError,
    ArtifactMismatchError,
    DataInfo,
    OodArtifact,
    check_encoder,
    load_artifact,
    save_artifact,
)
from models.ood.calibrate import auroc, evaluate, fpr_at_keep, threshold_for_keep
from models.ood.data import Split, load_split
from models.ood.detector import OodDetector, Progress, embed_split, fit_artifact
from models.ood.encoding import EncoderConfig, EncoderInfo, fingerprint
from models.ood.mahalanobis import RelativeMahalanobis
from models.ood.scoring import (
    METHODS,
    Array,
    CombinedScorer,
    KnnScorer,
    ScorerConfig,
    build_scorer,
    unit_rows,
)
from services.common.errors import ConfigError
from services.workers.ood_runtime import OodRuntime
from services.workers.runtime import PredictionError
from services.workers.texts import payload_text

DIM = 16
INFO = EncoderInfo(
    name="fake/encoder",
    weights_sha256="a" * 64,
    config_sha256="b" * 64,
    layers=(6,),
    max_length=32,
    dim=DIM,
)
DATA = DataInfo("c" * 64, 200, 5, "d" * 64, 100)


def clusters(rng: np.random.Generator, centres: Array, per_class: int) -> tuple[Array, list[str]]:
    """per_class points around each centre, with labels c0, c1, ..."""
    x = np.concatenate([c + 0.35 * rng.standard_normal((per_class, DIM)) for c in centres])
    labels = [f"c{i}" for i in range(len(centres)) for _ in range(per_class)]
    return x.astype(np.float32), labels


@dataclass(frozen=True)
class Synthetic:
    ref: Array  # 5 classes x 40 points
    labels: list[str]
    cal: Array  # 5 classes x 20 held-out points
    ood: Array  # 40 points away from every class


@pytest.fixture(scope="module")
def synthetic() -> Synthetic:
    rng = np.random.default_rng(0)
    centres = 2.0 * unit_rows(rng.standard_normal((5, DIM)).astype(np.float32))
    ref, labels = clusters(rng, centres, 40)
    cal, _ = clusters(rng, centres, 20)
    far = 2.0 * unit_rows(rng.standard_normal((40, DIM)).astype(np.float32))
    return Synthetic(ref, labels, cal, far)


class FakeEncoder:
    """Maps each text to a fixed vector (or a hash-seeded random one)."""

    def __init__(self, vectors: dict[str, Array], info: EncoderInfo = INFO) -> None:
        self.vectors = vectors
        self._info = info
        self.calls = 0

    @property
    def info(self) -> EncoderInfo:
        return self._info

    def encode(self, texts: Sequence[str], progress: Progress | None = None) -> Array:
        self.calls += 1
        if progress is not None:
            progress(len(texts), len(texts))
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


def fitted(synthetic: Synthetic, method: str) -> OodArtifact:
    config = ScorerConfig(method=method, k=3, znorm_sample=50)  # type: ignore[arg-type]
    return fit_artifact(
        config=config,
        encoder=INFO,
        reference=(synthetic.ref, synthetic.labels),
        calibration=synthetic.cal,
        data=DATA,
    )


# --- scorers -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_every_method_separates_far_points_from_the_clusters(
    synthetic: Synthetic, method: str
) -> None:
    scorer = fitted(synthetic, method).build_scorer()
    assert auroc(scorer.score(synthetic.cal), scorer.score(synthetic.ood)) > 0.95


def test_knn_is_the_cosine_distance_to_the_kth_neighbour() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((30, DIM)).astype(np.float32)
    query = rng.standard_normal((4, DIM)).astype(np.float32)
    scorer = KnnScorer(k=3).fit(ref, ["x"] * 30)
    sims = np.sort(unit_rows(query) @ unit_rows(ref).T, axis=1)[:, ::-1]
    np.testing.assert_allclose(scorer.score(query), 1 - sims[:, 2], atol=1e-6)
    own = scorer.score(ref[:4], leave_one_out=True)
    others = np.sort(unit_rows(ref[:4]) @ unit_rows(ref).T, axis=1)[:, ::-1]
    np.testing.assert_allclose(own, 1 - others[:, 3], atol=1e-6)  # rank 0 is itself


def test_relative_mahalanobis_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((90, 4)).astype(np.float32) + np.repeat(
        np.eye(4, dtype=np.float32)[:3] * 3, 30, axis=0
    )
    labels = [f"c{i // 30}" for i in range(90)]
    query = rng.standard_normal((5, 4)).astype(np.float32)
    got = RelativeMahalanobis(shrinkage=0.0).fit(x, labels).score(query)
    xd, y = x.astype(np.float64), np.array(labels)
    means = {c: xd[y == c].mean(0) for c in sorted(set(labels))}
    centred = xd - np.stack([means[c] for c in labels])
    prec = np.linalg.inv(centred.T @ centred / len(xd))
    prec0 = np.linalg.inv(np.cov(xd.T, bias=True))
    mu0 = xd.mean(0)
    for q, score in zip(query.astype(np.float64), got, strict=True):
        d = min((q - m) @ prec @ (q - m) for m in means.values())
        assert score == pytest.approx(d - (q - mu0) @ prec0 @ (q - mu0), rel=1e-3, abs=1e-3)


def test_relative_mahalanobis_rejects_unusable_references() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="two classes"):
        RelativeMahalanobis().fit(x, ["a"] * 4)
    with pytest.raises(ValueError, match="labels"):
        RelativeMahalanobis().fit(x, ["a", "b"])


def test_combined_is_the_sum_of_z_normalised_scores(synthetic: Synthetic) -> None:
    scorer = fitted(synthetic, "combined").build_scorer()
    assert isinstance(scorer, CombinedScorer)
    m1, s1, m2, s2 = (float(v) for v in scorer.znorm)
    x = synthetic.ood
    expected = (scorer.knn.score(x) - m1) / s1 + (scorer.relmaha.score(x) - m2) / s2
    np.testing.assert_allclose(scorer.score(x), expected, rtol=1e-5, atol=1e-5)
    assert s1 > 0
    assert s2 > 0


@pytest.mark.parametrize(
    "kwargs", [{"method": "lof"}, {"k": 0}, {"shrinkage": -1.0}, {"znorm_sample": 1}]
)
def test_invalid_scorer_configs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ScorerConfig(**kwargs)  # type: ignore[arg-type]


def test_knn_needs_more_points_than_k() -> None:
    with pytest.raises(ValueError, match="more than 5"):
        build_scorer(ScorerConfig(method="knn", k=5)).fit(np.ones((5, 2), np.float32), ["a"] * 5)


# --- calibration and metrics ---------------------------------------------------------


def test_threshold_keeps_the_requested_share() -> None:
    scores = np.random.default_rng(3).permutation(200).astype(np.float64)
    threshold = threshold_for_keep(scores, 0.95)
    assert threshold == 189.0
    assert np.mean(scores <= threshold) == 0.95
    assert threshold_for_keep(scores, 1.0) == 199.0
    assert np.mean(scores <= threshold_for_keep(scores[:7], 0.5)) > 0  # ceil: 4 of 7 kept
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="keep"):
            threshold_for_keep(scores, bad)
    with pytest.raises(ValueError, match="no in-distribution"):
        threshold_for_keep(np.array([]), 0.95)


def test_auroc_is_the_pairwise_win_rate_with_ties_counted_half() -> None:
    rng = np.random.default_rng(4)
    s_in, s_out = rng.integers(0, 5, 40).astype(float), rng.integers(2, 8, 30).astype(float)
    pairs = [(o > i) + 0.5 * (o == i) for o in s_out for i in s_in]
    assert auroc(s_in, s_out) == pytest.approx(np.mean(pairs))
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0


def test_metrics_at_the_calibrated_threshold() -> None:
    s_in = np.arange(100, dtype=float)  # threshold for 95%: 94
    s_out = np.array([10.0, 94.0, 95.0, 200.0])
    assert fpr_at_keep(s_in, s_out) == 0.5
    metrics = evaluate(s_in, s_out, threshold=94.0)
    assert (metrics.caught, metrics.kept, metrics.fpr_at_95) == (0.5, 0.95, 0.5)
    assert metrics.as_dict()["n_out"] == 4


# --- artifacts -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_artifact_round_trip_scores_alike(
    synthetic: Synthetic, method: str, tmp_path: Path
) -> None:
    artifact = fitted(synthetic, method)
    saved = save_artifact(artifact, tmp_path / "a")
    loaded = load_artifact(tmp_path / "a")
    assert loaded.version == saved.version
    assert len(saved.version) == 16
    assert (loaded.scorer, loaded.threshold, loaded.encoder, loaded.data) == (
        artifact.scorer,
        artifact.threshold,
        artifact.encoder,
        artifact.data,
    )
    x = synthetic.ood
    np.testing.assert_array_equal(loaded.build_scorer().score(x), artifact.build_scorer().score(x))
    assert save_artifact(artifact, tmp_path / "b").version == saved.version  # content hash
    assert save_artifact(replace(artifact, threshold=1.0), tmp_path / "c").version != saved.version


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"weights_sha256": "e" * 64}, "weights_sha256"),
        ({"config_sha256": "f" * 64}, "config_sha256"),
        ({"layers": (5, 6)}, "layers"),
        ({"max_length": 64}, "max_length"),
        ({"name": "other/encoder"}, "name"),
    ],
)
def test_an_artifact_refuses_another_encoder(
    synthetic: Synthetic, change: dict[str, object], field: str
) -> None:
    artifact = fitted(synthetic, "knn")
    check_encoder(artifact, INFO)
    other = replace(INFO, **change)  # type: ignore[arg-type]
    with pytest.raises(ArtifactMismatchError, match=f"{field}: artifact has") as caught:
        check_encoder(artifact, other)
    assert field in caught.value.differences
    with pytest.raises(ArtifactMismatchError):
        OodDetector(FakeEncoder({}, other), artifact)


def test_unusable_artifacts_are_typed_errors(synthetic: Synthetic, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no artifact\.json"):
        load_artifact(tmp_path / "missing")
    folder = tmp_path / "a"
    save_artifact(fitted(synthetic, "relmaha"), folder)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(ArtifactError, match="format 99"):
        load_artifact(folder)
    (folder / META_FILE).write_text(json.dumps(meta))
    with (folder / ARRAYS_FILE).open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load_artifact(folder)
    broken = replace(fitted(synthetic, "relmaha"), arrays={})
    with pytest.raises(ArtifactError, match="lacks the array"):
        broken.build_scorer()


def test_the_detector_flags_scores_above_the_threshold(synthetic: Synthetic) -> None:
    artifact = fitted(synthetic, "combined")
    vectors = {"near": synthetic.cal[0], "far": synthetic.ood[0]}
    detector = OodDetector(FakeEncoder(vectors), artifact)
    near, far = detector.predict(["near", "far"])
    assert (near.is_ood, far.is_ood) == (False, True)
    assert far.score > artifact.threshold >= near.score


# --- data, fingerprints, embedding cache ---------------------------------------------


def test_splits_load_and_hash_their_content(tmp_path: Path) -> None:
    rows = [{"text": "hi", "intent": "greet"}, {"text": "sky?", "intent": "oos"}]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    split = load_split(tmp_path, "val")
    assert split.in_scope().texts == ("hi",)
    assert split.out_of_scope().intents == ("oos",)
    assert split.sha256() != Split(("hi", "sky?"), ("greet", "greet")).sha256()
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_split(tmp_path, "bad")


def test_the_fingerprint_follows_weights_config_and_pooling(tmp_path: Path) -> None:
    config_json = {"hidden_size": 8, "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    config = EncoderConfig(name="tiny", model_dir=str(tmp_path), layers=(1, 2))
    first = fingerprint(config)
    assert first.dim == 16
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    second = fingerprint(config)
    assert second.weights_sha256 != first.weights_sha256
    assert second.config_sha256 == first.config_sha256
    with pytest.raises(ValueError, match="layers"):
        fingerprint(replace(config, layers=(3,)))


def test_embeddings_are_cached_by_encoder_and_data(tmp_path: Path) -> None:
    vectors = {t: np.full(DIM, i, np.float32) for i, t in enumerate(["a", "b"])}
    encoder = FakeEncoder(vectors)
    split = Split(("a", "b"), ("x", "y"), "s")
    first = embed_split(encoder, split, tmp_path)
    np.testing.assert_array_equal(embed_split(encoder, split, tmp_path), first)
    assert encoder.calls == 1
    embed_split(FakeEncoder(vectors, replace(INFO, layers=(5,))), split, tmp_path)
    embed_split(encoder, Split(("b", "a"), ("y", "x"), "s"), tmp_path)
    assert encoder.calls == 2
    assert len(list(tmp_path.glob("emb-*.npy"))) == 3


# --- worker runtime ------------------------------------------------------------------


def test_the_runtime_scores_texts_and_rejects_bad_payloads(
    synthetic: Synthetic, tmp_path: Path
) -> None:
    artifact = save_artifact(fitted(synthetic, "combined"), tmp_path)
    runtime = OodRuntime({"artifact": str(tmp_path)})
    with pytest.raises(PredictionError, match="not loaded"):
        runtime.predict_batch(["near"])
    runtime._detector = OodDetector(
        FakeEncoder({"near": synthetic.cal[0], "far": synthetic.ood[0]}), artifact
    )
    out = runtime.predict_batch(["near", {"text": "far"}, {"query": "x"}, "  ", 3])
    assert isinstance(out[0], dict)
    assert isinstance(out[1], dict)
    assert (out[0]["is_ood"], out[1]["is_ood"]) == (False, True)
    assert out[1]["method"] == "combined"
    assert out[1]["artifact_version"] == artifact.version
    assert set(out[0]) == {"ood_score", "is_ood", "method", "artifact_version"}
    assert all(isinstance(o, PredictionError) for o in out[2:])


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("plain", "plain"),
        ({"text": "field"}, "field"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}, "hi"),
        (
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "last"},
                ]
            },
            "last",
        ),
        ({"messages": [{"role": "system", "content": "only"}]}, None),
        ({"messages": [{"role": "user", "content": "  "}]}, None),
        ({"messages": "hi"}, None),
    ],
)
def test_chat_payloads_are_scored_on_their_last_user_turn(payload: Any, expected: Any) -> None:
    text = payload_text(payload, "text")
    if expected is None:
        assert isinstance(text, PredictionError)
    else:
        assert text == expected


def test_the_runtime_turns_artifact_problems_into_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid params for runtime 'ood'"):
        OodRuntime({"artifact": ""})
    runtime = OodRuntime({"artifact": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"no artifact\.json"):
        runtime.load()
    assert not runtime.ready


# --- command line --------------------------------------------------------------------


def test_eval_reports_a_foreign_artifact_before_loading_weights(
    synthetic: Synthetic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from models.ood.cli import main  # noqa: PLC0415 - imports transformers (seconds)

    save_artifact(fitted(synthetic, "knn"), tmp_path / "a")
    assert main(["eval", "--artifact", str(tmp_path / "missing"), "--data", str(tmp_path)]) == 2
    assert "no artifact.json" in capsys.readouterr().err
    assert main(["eval", "--artifact", str(tmp_path / "a"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "artifact does not match the encoder" in err
    assert "weights_sha256: artifact has 'aaaa" in err

"""The OOD detector on CLINC150 with the real MiniLM encoder (CPU, no broker).

Fits on train's 15,000 in-scope queries, evaluates on val's 3,000 in-scope and 100
out-of-scope ones. Embeddings are cached under ``RDV_OOD_CACHE`` (default
``.rdv/cache/ood``) keyed by encoder and data hashes: the first run embeds ~18k
sentences (a few minutes on 2 cores), later runs take seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models.ood.artifact import load_artifact
from models.ood.calibrate import auroc, evaluate, fpr_at_keep, threshold_for_keep
from models.ood.data import Split, load_split
from models.ood.detector import embed_split
from models.ood.embed import Encoder, load_encoder
from models.ood.encoding import WEIGHTS_FILE, bundled_model_dir
from models.ood.scoring import Array, ScorerConfig, build_scorer
from services.common.errors import ConfigError
from services.workers.ood_runtime import OodRuntime
from tests.integration.clinc import CLINC150, OOD_CACHE, run_ood_cli

DATA, CACHE = CLINC150, OOD_CACHE

# The data ships in the repository (models/ood/clinc150): a missing
# copy is an error, never a silent skip.
assert (DATA / "train.jsonl").is_file(), f"no CLINC150 at {DATA}; set RDV_CLINC150_DIR"

pytestmark = [
    pytest.mark.timeout(1200),  # a cold cache embeds ~18k sentences in the first fixture
]


@dataclass(frozen=True)
class Clinc:
    train: Split  # in-scope only
    val_in: Split
    val_out: Split
    x_train: Array
    x_in: Array
    x_out: Array


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder()


@pytest.fixture(scope="module")
def clinc(encoder: Encoder) -> Clinc:
    train = load_split(DATA, "train").in_scope()
    val = load_split(DATA, "val")
    val_in, val_out = val.in_scope(), val.out_of_scope()
    return Clinc(
        train,
        val_in,
        val_out,
        embed_split(encoder, train, CACHE),
        embed_split(encoder, val_in, CACHE),
        embed_split(encoder, val_out, CACHE),
    )


@pytest.mark.parametrize(
    ("method", "min_auroc", "max_fpr"),
    [("knn", 0.95, 0.20), ("relmaha", 0.97, 0.12), ("combined", 0.98, 0.08)],
)
def test_each_method_separates_out_of_scope_queries(
    clinc: Clinc, method: str, min_auroc: float, max_fpr: float
) -> None:
    scorer = build_scorer(ScorerConfig(method=method))  # type: ignore[arg-type]
    scorer.fit(clinc.x_train, clinc.train.intents)
    s_in, s_out = scorer.score(clinc.x_in), scorer.score(clinc.x_out)
    print(f"\n{method}: AUROC {auroc(s_in, s_out):.4f}, FPR@95 {fpr_at_keep(s_in, s_out):.3f}")
    assert auroc(s_in, s_out) >= min_auroc
    assert fpr_at_keep(s_in, s_out) <= max_fpr


def test_a_threshold_calibrated_on_half_of_val_keeps_95_percent_of_the_other_half(
    clinc: Clinc,
) -> None:
    seen: dict[str, int] = {}
    first_half = []
    for intent in clinc.val_in.intents:  # 20 queries per intent: 10 to calibrate, 10 to test
        seen[intent] = seen.get(intent, 0) + 1
        first_half.append(seen[intent] <= 10)
    mask = np.array(first_half)
    scorer = build_scorer(ScorerConfig()).fit(clinc.x_train, clinc.train.intents)
    s_in = scorer.score(clinc.x_in)
    threshold = threshold_for_keep(s_in[mask], 0.95)
    metrics = evaluate(s_in[~mask], scorer.score(clinc.x_out), threshold)
    print(f"\nheld-out half: kept {metrics.kept:.3f}, out-of-scope caught {metrics.caught:.2f}")
    assert 0.93 <= metrics.kept <= 0.97  # 1,500 queries: +-2 points is ~2.5 standard errors
    assert metrics.caught >= 0.9


@pytest.fixture
def artifact_dir(clinc_artifact: Path, clinc: Clinc) -> Path:
    """The session's CLINC150 artifact (after ``clinc`` has filled the embedding cache)."""
    return clinc_artifact


def test_the_cli_fits_and_evaluates_an_artifact(artifact_dir: Path) -> None:
    result = run_ood_cli(
        "eval",
        *("--artifact", str(artifact_dir), "--data", str(DATA), "--cache-dir", str(CACHE)),
        *("--latency-requests", "20", "--batch-sizes", "8"),
    )
    assert result["method"] == "combined"
    assert result["artifact_version"] == load_artifact(artifact_dir).version
    assert result["auroc"] >= 0.98  # type: ignore[operator]
    assert result["fpr_at_95"] <= 0.08  # type: ignore[operator]
    assert result["kept"] >= 0.95  # type: ignore[operator]
    assert result["calibrated_on_this_split"] is True
    latency = result["latency_ms"]
    assert isinstance(latency, dict)
    assert {"single", "batch_8"} <= set(latency)


@pytest.fixture
def runtime(artifact_dir: Path) -> Iterator[OodRuntime]:
    model = OodRuntime({"artifact": str(artifact_dir)})
    model.load()
    yield model
    model.unload()


def test_the_worker_runtime_flags_out_of_scope_queries(runtime: OodRuntime, clinc: Clinc) -> None:
    inside = list(clinc.val_in.texts[::150])  # 20 queries of different intents
    outside = list(clinc.val_out.texts[:20])
    out = runtime.predict_batch([*inside, *({"text": t} for t in outside)])
    flags = [o["is_ood"] for o in out if isinstance(o, dict)]
    assert len(flags) == 40
    assert sum(flags[:20]) <= 3
    assert sum(flags[20:]) >= 17


def test_the_worker_refuses_an_artifact_from_another_encoder(
    artifact_dir: Path, tmp_path: Path
) -> None:
    source = bundled_model_dir()
    for item in source.iterdir():  # the same weights, another tokenizer config
        if item.name != "tokenizer_config.json":
            (tmp_path / item.name).symlink_to(item)
    config = json.loads((source / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"do_lower_case": False}))
    assert (tmp_path / WEIGHTS_FILE).is_file()
    model = OodRuntime({"artifact": str(artifact_dir), "model_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="config_sha256: artifact has"):
        model.load()
    assert not model.ready

"""Fixtures shared by integration test modules (the broker ones are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.clinc import CLINC150, OOD_CACHE, run_ood_cli


@pytest.fixture(scope="session")
def clinc_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OOD artifact fitted by the CLI on CLINC150 (train in-scope, calibrated on val),
    once per session; embeddings are cached under RDV_OOD_CACHE across sessions."""
    assert (CLINC150 / "train.jsonl").is_file(), f"no CLINC150 at {CLINC150}; set RDV_CLINC150_DIR"
    out = tmp_path_factory.mktemp("ood") / "artifact"
    run_ood_cli("fit", "--data", str(CLINC150), "--out", str(out), "--cache-dir", str(OOD_CACHE))
    return out

"""CLINC150 for the OOD tests: where the data and the embedding cache are, and the
``python -m models.ood`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from models.ood.data import CLINC150_DIR

REPO = Path(__file__).resolve().parents[2]
CLINC150 = Path(os.environ.get("RDV_CLINC150_DIR", CLINC150_DIR))
OOD_CACHE = Path(os.environ.get("RDV_OOD_CACHE", REPO / ".rdv" / "cache" / "ood"))


def run_ood_cli(*args: str) -> dict[str, object]:
    """``python -m models.ood <args>``; its last stdout line, a JSON object."""
    proc = subprocess.run(
        [sys.executable, "-m", "models.ood", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,  # a cold embedding cache: ~18k sentences on 2 cores
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result

"""Processes that do not run models must not load torch (memory, start time)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "services.gateway.__main__",
        "services.rendezvous.__main__",
        "services.workers.__main__",
        "services.archive.__main__",
        "services.compare.__main__",
        "services.cli.main",
    ],
)
def test_service_entry_points_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]

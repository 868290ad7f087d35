"""``exit_now``: a worker's clean end skips the interpreter's teardown (seconds after torch
was imported) but still flushes what it printed and logged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SCRIPT = """
import atexit, logging, sys
from services.common.lifecycle import exit_now
logging.basicConfig(stream=sys.stderr)
logging.getLogger("t").warning("logged before the end")
print("printed, still in the buffer", end="")
atexit.register(lambda: print(" teardown ran"))
exit_now(3)
"""


def test_exit_now_flushes_output_and_skips_the_teardown() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert proc.stdout == "printed, still in the buffer"  # flushed; atexit never ran
    assert "logged before the end" in proc.stderr


def test_a_worker_that_cannot_start_still_says_why_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.workers", "--model", str(REPO / "no-such-spec.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "no-such-spec.yaml" in proc.stderr

"""The OOD fit's progress lines on stderr carry the elapsed time (``make up`` shows them)."""

from __future__ import annotations

import re

import pytest

from models.ood.cli import _Steps
from models.ood.detector import stderr_progress


def test_embedding_progress_lines_say_how_long_it_has_taken(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = stderr_progress("train:in", every=2)
    for done in (64, 128, 150):
        report(done, 150)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # every second batch, and the last
    assert re.fullmatch(r"train:in: embedded 128/150 \(\d+ s\)", lines[0])
    assert re.fullmatch(r"train:in: embedded 150/150 \(\d+ s\)", lines[1])


def test_fit_steps_are_announced_with_elapsed_time(capsys: pytest.CaptureFixture[str]) -> None:
    say = _Steps("fit")
    say("loading the encoder")
    assert re.fullmatch(r"fit: loading the encoder \(\d+ s\)\n", capsys.readouterr().err)

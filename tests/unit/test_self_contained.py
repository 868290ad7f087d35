"""The repository holds what it needs: no tracked file points at a folder beside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# a relative path up and into the workspace's folder, REPO.parent / that folder, and the like
BESIDE = re.compile(
    r"\.\./sh"
    r"ared\b"  # a relative path
    r"|\.parent\s*/\s*[\"']shared[\"']"  # the repository's parent / that folder
    r"|parents\[\d+\]\s*/\s*[\"']shared"  # Path(__file__).parents[2] / that folder
)


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    files = [REPO / n.decode() for n in names if n]
    return [f for f in files if f.is_file() and f.stat().st_size < 2_000_000]


def test_the_pattern_catches_what_the_repo_used_to_hold() -> None:
    beside = "sh" + "ared"  # spelled apart so this file does not match itself
    assert BESIDE.search(f"CLINC150 ?= ../{beside}/data/clinc150")
    assert BESIDE.search(f'REPO.parent / "{beside}" / "data"')
    assert not BESIDE.search("models/ood/clinc150 and services/common/shared.py")


def test_no_tracked_file_reads_a_folder_beside_the_repository() -> None:
    me = Path(__file__).resolve()
    offenders = []
    for path in tracked_text_files():
        if path == me:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [
            f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}"
            for m in BESIDE.finditer(text)
        ]
    assert offenders == []


def test_clinc150_ships_with_its_license() -> None:
    data = REPO / "models" / "ood" / "clinc150"
    for name in ("train.jsonl", "val.jsonl", "LICENSE", "README.md"):
        assert (data / name).is_file(), name
    assert "Attribution 3.0" in (data / "LICENSE").read_text(encoding="utf-8")

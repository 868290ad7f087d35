"""``rdv policy evaluate``, ``rdv promote --gate`` and ``rdv canary watch`` on a small
archive, through the real control plane code (services.control.changes.Control) over an
in-memory ledger."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import control as control_cli
from services.cli.args import build_parser
from services.cli.main import main
from services.common.messages import ControlEntry
from services.control.changes import Control
from services.control.plane import Direct
from services.control.state import ControlState
from tests.factories import policy_doc
from tests.unit.compare.archive_rows import ArchiveRows


class MemoryLedger:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, ControlEntry | None]] = []

    def read(self) -> ControlState:
        state = ControlState()
        for key, entry in self.records:
            state.apply(key, entry)
        return state

    def publish(self, entries: Sequence[tuple[bytes, ControlEntry | None]]) -> None:
        self.records += entries


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Direct:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "demo.yaml").write_text(yaml.safe_dump(policy_doc()))
    direct = Direct(Control(MemoryLedger(), folder, wall_ms=lambda: 1_767_225_600_000))
    monkeypatch.setattr(control_cli, "_plane", lambda args, admin=True: direct)
    return direct


def _archive(tmp_path: Path, slow_error: float, slow_in_time: float, n: int = 600) -> Path:
    """fast against slow on ``n`` requests: slow fails with ``slow_error`` and is in
    time with ``slow_in_time``; fast is in time on half."""
    rng = random.Random(1)
    rows = ArchiveRows()
    for i in range(n):
        rid = f"r{i}"
        rows.request(rid, at=i)
        rows.score(rid, "fast", 10.0 if rng.random() < 0.5 else 5000.0, at=i, role="champion")
        failed = rng.random() < slow_error
        latency = 10.0 if rng.random() < slow_in_time else 5000.0
        rows.score(rid, "slow", latency, at=i, status="error" if failed else "ok")
        rows.decision(rid, "fast")
    return rows.write(tmp_path / "archive")


def test_the_parser_reads_the_new_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["promote", "m", "--gate", "--watch", "--interval", "5", "--alpha", "0.01"]
    )
    assert (args.gate, args.watch, args.interval, args.alpha, args.max_wait) == (
        True,
        True,
        5.0,
        0.01,
        3600.0,
    )
    args = parser.parse_args(["canary", "watch", "demo", "--once", "--since", "2h"])
    assert (args.action, args.endpoint, args.once, args.since) == ("watch", "demo", True, "2h")
    assert args.run == "control:canary_command"
    args = parser.parse_args(["policy", "evaluate", "demo", "c.yaml", "--json", "--until", "1h"])
    assert (args.action, args.file, args.json, args.until) == (
        "evaluate",
        Path("c.yaml"),
        True,
        "1h",
    )
    for bad in (["promote", "m", "--alpha", "1.5"], ["canary", "watch", "demo", "--interval", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_policy_evaluate_prints_the_candidate_next_to_the_policy_in_force(
    tmp_path: Path, plane: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ArchiveRows()
    for i in range(40):
        rid = f"r{i}"
        rows.request(rid, at=i)
        rows.score(rid, "fast", 10.0, at=i, role="champion")
        rows.score(rid, "slow", 50.0, at=i)
        rows.decision(rid, "fast")
        rows.feedback(rid, float(i % 2))
    archive = rows.write(tmp_path / "archive")
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(policy_doc(deadline_ms=900)))
    argv = ["policy", "evaluate", "demo", str(candidate), "--archive", str(archive)]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 40
    assert out["in_force_version"] == 1
    assert out["candidate"]["ips"]["value"] == pytest.approx(0.5)
    assert out["on_policy"]["value"] == pytest.approx(0.5)
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "candidate        DR" in table
    assert "in force (v1)    on-policy" in table
    assert main(["policy", "evaluate", "demo", "--archive", str(archive)]) == 2  # no file
    assert "candidate policy file" in capsys.readouterr().err


def test_promote_gate_promotes_a_better_challenger_and_refuses_a_worse_one(
    tmp_path: Path, plane: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    better = _archive(tmp_path / "b", slow_error=0.0, slow_in_time=0.8)
    worse = _archive(tmp_path / "w", slow_error=0.3, slow_in_time=0.5)
    same = _archive(tmp_path / "s", slow_error=0.0, slow_in_time=0.5, n=150)
    base = ["promote", "slow", "--endpoint", "demo", "--gate", "--archive"]
    assert main([*base, str(worse)]) == 4
    assert "worse on" in capsys.readouterr().out
    assert main([*base, str(same)]) == 3
    assert plane.show("demo")["version"] == 1  # nothing promoted yet
    assert main([*base, str(better)]) == 0
    out = capsys.readouterr().out
    assert "gate: promote (within_deadline better, no metric worse)" in out
    assert plane.show("demo")["policy"]["stages"][0]["accept"] == ["slow"]


def test_canary_watch_rolls_a_worse_canary_back_with_the_evidence(
    tmp_path: Path, plane: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    plane.set_policy("demo", policy_doc(canary={"model": "slow", "share": 0.1}), "alice")
    healthy = _archive(tmp_path / "h", slow_error=0.0, slow_in_time=0.5, n=200)
    assert main(["canary", "watch", "demo", "--once", "--archive", str(healthy)]) == 0
    assert plane.show("demo")["version"] == 2  # left alone
    worse = _archive(tmp_path / "w", slow_error=0.3, slow_in_time=0.5)
    assert main(["canary", "watch", "demo", "--once", "--archive", str(worse)]) == 4
    view: dict[str, Any] = plane.show("demo")
    assert view["version"] == 3
    assert "canary" not in view["policy"]
    evidence = view["evidence"]
    assert evidence["check"] == "rdv canary watch"
    assert (evidence["canary"], evidence["champion"], evidence["policy_version"]) == (
        "slow",
        "fast",
        2,
    )
    assert evidence["decision"] == "reject"
    errors = next(m for m in evidence["metrics"] if m["metric"] == "error_rate")
    assert errors["call"] == "worse"
    assert errors["n"] == 600
    assert errors["low"] > 0
    assert errors["p_value"] <= errors["alpha"]
    capsys.readouterr()
    assert main(["policy", "show", "demo"]) == 0
    shown = capsys.readouterr().out
    assert "#   evidence: rdv canary watch: reject; " in shown
    assert "error_rate 0 -> 0.3 (difference +0.3 in [" in shown
    # no canary left: watching it is an error
    assert main(["canary", "watch", "demo", "--once", "--archive", str(worse)]) == 2

"""``rdv up`` supervises what it starts: a stack of two tiny real processes (from a
temporary stack file) on the session's broker; one is SIGKILLed, one crashes with an
error, both come back, ``rdv ps`` shows the restarts and why, ``rdv down`` stops all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.devstack.stack import load_stack, ready
from services.devstack.supervision import ProcessState, read_state

REPO = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("supervised_app.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    until = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < until, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)  # polling other processes' files, bounded above


class Rdv:
    """Runs ``rdv up|ps|down`` on a stack file with its own run dir and topic prefix."""

    def __init__(self, folder: Path, bootstrap: str, stack: str) -> None:
        self.run_dir = folder / "run"
        self.stack = folder / "stack.yaml"
        self.stack.write_text(stack)
        self.env = {
            **os.environ,
            "RDV_RUN_DIR": str(self.run_dir),
            "RDV_KAFKA_BOOTSTRAP": bootstrap,
            "RDV_KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        }

    def __call__(self, command: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli.main", command, "--stack", str(self.stack)],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def state(self, name: str) -> ProcessState:
        found = read_state(self.run_dir, name)
        assert found is not None, f"no state file for {name}"
        return found

    def ready(self, name: str) -> bool:
        state = read_state(self.run_dir, name)
        url = next(spec.ready for spec in load_stack(self.stack) if spec.name == name)
        return state is not None and state.status == "running" and ready(url)

    def pid(self, name: str) -> int:
        return int((self.run_dir / f"{name}.pid").read_text())


def _entry(name: str, port: int, *extra: str) -> str:
    entry = {
        "name": name,
        "command": ["python", str(APP), str(port), name, *extra],
        "ready": f"http://127.0.0.1:{port}/readyz",
    }
    return f"  - {json.dumps(entry)}\n"  # JSON is YAML


@pytest.fixture
def rdv(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Rdv]:
    crash = tmp_path / "crash-now"
    stack = (
        "processes:\n"
        + _entry("steady", _free_port())
        + _entry("crashy", _free_port(), "--crash-file", str(crash))
    )
    runner = Rdv(tmp_path, kafka_bootstrap, stack)
    try:
        yield runner
    finally:
        runner("down")


def test_up_restarts_a_killed_and_a_crashed_process_and_ps_says_why(
    rdv: Rdv, tmp_path: Path
) -> None:
    up = rdv("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "steady" in up.stdout
    assert "crashy" in up.stdout
    assert up.stdout.count("ready in") == 2
    supervisor = int((rdv.run_dir / "supervisor.pid").read_text())
    first = rdv.pid("steady")
    assert rdv.state("steady").status == "running"

    os.kill(first, signal.SIGKILL)  # what the chaos harness does
    _until(lambda: rdv.state("steady").restarts == 1, 20.0, "steady restarted")
    _until(lambda: _alive(rdv.pid("steady")), 20.0, "steady's new pid in its pid file")
    second = rdv.pid("steady")
    assert second != first
    assert rdv.state("steady").pid == second

    (tmp_path / "crash-now").write_text("1")
    _until(lambda: rdv.state("crashy").restarts >= 1, 20.0, "crashy restarted")
    (tmp_path / "crash-now").unlink()
    _until(lambda: rdv.ready("steady") and rdv.ready("crashy"), 60.0, "both ready again")

    ps = rdv("ps")
    lines = {line.split()[0]: line for line in ps.stdout.splitlines()}
    assert f"running (pid {supervisor})" in lines["supervisor"]
    assert f"ready (pid {second}), restarts 1, last exit: killed by SIGKILL" in lines["steady"]
    assert "last exit: exit code 3" in lines["crashy"]
    assert lines["crashy"].endswith("(app failed: crash file found)")

    down = rdv("down")
    assert down.returncode == 0, down.stderr
    assert "steady" in down.stdout
    assert "stopped" in down.stdout
    assert not _alive(supervisor)
    assert not _alive(second)
    assert not (rdv.run_dir / "steady.pid").exists()
    assert rdv.state("steady").status == "stopped"
    assert rdv.state("steady").last_exit == "exit code 0"  # SIGTERM, then a clean exit
    assert "was not running" in rdv("down").stdout  # idempotent


def test_up_fails_and_cleans_up_when_a_process_exits_while_starting(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    stack = "processes:\n" + _entry("broken", _free_port(), "--fail", "2")
    rdv = Rdv(tmp_path, kafka_bootstrap, stack)
    try:
        up = rdv("up")
        assert up.returncode == 2
        assert "broken exited during start-up (exit code 2: app cannot start: asked to fail)" in (
            up.stderr
        )
        assert not (rdv.run_dir / "supervisor.pid").exists()
        ps = {line.split()[0]: line for line in rdv("ps").stdout.splitlines()}
        assert ps["supervisor"].endswith("stopped")
    finally:
        rdv("down")

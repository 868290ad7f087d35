"""The local stack as processes: ``rdv up`` starts what ``deploy/local/stack.yaml``
declares (after the Kafka broker), waits until each is ready, and ``rdv down`` stops
them in reverse order. State (pids, logs) lives in ``.rdv/run/``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.errors import BrokerSetupError, ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = PROJECT_ROOT / "deploy" / "local" / "stack.yaml"
RUN_DIR = Path(os.environ.get("RDV_RUN_DIR", PROJECT_ROOT / ".rdv" / "run"))
"""Pids and logs of the stack's processes and of deployed models (RDV_RUN_DIR moves it)."""


class ProcessSpec(BaseModel):
    """One long-running process of the stack."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    command: list[str] = Field(min_length=1)
    """argv; a leading ``python`` means this interpreter (the project's venv)."""
    env: dict[str, str] = Field(default_factory=dict)
    ready: str
    """URL that answers 200 once the process can do its work."""


class StackFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    processes: list[ProcessSpec]


def load_stack(path: Path = STACK_FILE) -> list[ProcessSpec]:
    try:
        return StackFile.model_validate(yaml.safe_load(path.read_bytes())).processes
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid stack file {path}: {exc}") from exc


def _argv(spec: ProcessSpec) -> list[str]:
    return (
        [sys.executable, *spec.command[1:]] if spec.command[0] == "python" else list(spec.command)
    )


def _pid(spec: ProcessSpec, run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / f"{spec.name}.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if spec.command[-1].encode() in cmdline else None


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - local URL
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    spec: ProcessSpec, env: dict[str, str], run_dir: Path = RUN_DIR, timeout_s: float = 120.0
) -> tuple[int, float]:
    """Start one process (unless it runs already) and wait until it is ready."""
    run_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    pid = _pid(spec, run_dir)
    log = run_dir / f"{spec.name}.log"
    proc: subprocess.Popen[bytes] | None = None
    if pid is None:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                _argv(spec),
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**env, **spec.env},
                start_new_session=True,
            )
        pid = proc.pid
        (run_dir / f"{spec.name}.pid").write_text(str(pid))
    while not _ready(spec.ready):
        if (proc.poll() is not None) if proc is not None else _pid(spec, run_dir) is None:
            raise BrokerSetupError(
                f"{spec.name} exited during start-up; last lines of {log}:\n{_tail(log)}"
            )
        if time.monotonic() - began > timeout_s:
            raise BrokerSetupError(
                f"{spec.name} was not ready at {spec.ready} within "
                f"{timeout_s:.0f} s; last lines of {log}:\n{_tail(log)}"
            )
        time.sleep(0.2)  # polling a readiness URL of another process
    return pid, time.monotonic() - began


def stop(spec: ProcessSpec, run_dir: Path = RUN_DIR, timeout_s: float = 20.0) -> bool:
    """SIGTERM, wait for a graceful exit, SIGKILL after timeout_s; False if not running."""
    pid = _pid(spec, run_dir)
    if pid is None:
        (run_dir / f"{spec.name}.pid").unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    until = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X"):
        if time.monotonic() > until:
            os.kill(pid, signal.SIGKILL)
            until = float("inf")
        time.sleep(0.1)  # not our child: /proc is all there is to watch
    (run_dir / f"{spec.name}.pid").unlink(missing_ok=True)
    return True


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def status(specs: list[ProcessSpec], run_dir: Path = RUN_DIR) -> list[tuple[str, str]]:
    """(name, 'ready' | 'running, not ready' | 'stopped') per process."""
    out = []
    for spec in specs:
        pid = _pid(spec, run_dir)
        state = (
            "stopped" if pid is None else ("ready" if _ready(spec.ready) else "running, not ready")
        )
        out.append((spec.name, state if pid is None else f"{state} (pid {pid})"))
    return out

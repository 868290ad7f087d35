"""The local stack as processes: ``rdv up`` starts a supervisor (services.devstack.supervisor)
that runs what ``deploy/local/stack.yaml`` declares and restarts what exits; ``rdv down``
stops the supervisor, then anything left. ``start``/``stop`` run one process without a
supervisor (deployed models, benchmarks). State (pids, logs) lives in ``.rdv/run/``."""

from __future__ import annotations

import contextlib
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
from services.devstack.supervision import read_state

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


def argv(spec: ProcessSpec) -> list[str]:
    return (
        [sys.executable, *spec.command[1:]] if spec.command[0] == "python" else list(spec.command)
    )


def pid_of(spec: ProcessSpec, run_dir: Path = RUN_DIR) -> int | None:
    try:
        pid = int((run_dir / f"{spec.name}.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if spec.command[-1].encode() in cmdline else None


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - local URL
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = 15) -> str:
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
    pid = pid_of(spec, run_dir)
    log = run_dir / f"{spec.name}.log"
    proc: subprocess.Popen[bytes] | None = None
    if pid is None:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv(spec),
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**env, **spec.env},
                start_new_session=True,
            )
        pid = proc.pid
        (run_dir / f"{spec.name}.pid").write_text(str(pid))
    while not ready(spec.ready):
        if (proc.poll() is not None) if proc is not None else pid_of(spec, run_dir) is None:
            raise BrokerSetupError(
                f"{spec.name} exited during start-up; last lines of {log}:\n{tail(log)}"
            )
        if time.monotonic() - began > timeout_s:
            raise BrokerSetupError(
                f"{spec.name} was not ready at {spec.ready} within "
                f"{timeout_s:.0f} s; last lines of {log}:\n{tail(log)}"
            )
        time.sleep(0.2)  # polling a readiness URL of another process
    return pid, time.monotonic() - began


def stop(spec: ProcessSpec, run_dir: Path = RUN_DIR, timeout_s: float = 20.0) -> bool:
    """SIGTERM, wait for a graceful exit, SIGKILL after timeout_s; False if not running."""
    return stop_all([spec], run_dir, timeout_s)[spec.name]


def stop_all(
    specs: list[ProcessSpec], run_dir: Path = RUN_DIR, timeout_s: float = 10.0
) -> dict[str, bool]:
    """SIGTERM to every running process at once, wait for them together, SIGKILL those
    still there after timeout_s; per name, whether it was running."""
    pids = {spec.name: pid_of(spec, run_dir) for spec in specs}
    live = [pid for pid in pids.values() if pid is not None]
    for pid in live:
        _kill(pid, signal.SIGTERM)
    if not wait_gone(live, timeout_s):
        for pid in live:
            _kill(pid, signal.SIGKILL)
        wait_gone(live, 5.0)
    for spec in specs:
        (run_dir / f"{spec.name}.pid").unlink(missing_ok=True)
    return {name: pid is not None for name, pid in pids.items()}


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    """Wait until none of ``pids`` runs (zombies count as gone); False on timeout."""
    until = time.monotonic() + timeout_s
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > until:
            return False
        time.sleep(0.05)  # not our children: /proc is all there is to watch
    return True


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def supervisor_pid(run_dir: Path = RUN_DIR) -> int | None:
    """The running supervisor's pid (its pid file checked against /proc), else None."""
    try:
        pid = int((run_dir / "supervisor.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"services.devstack.supervisor" in cmdline and _alive(pid) else None


def start_supervisor(
    stack_file: Path, env: dict[str, str], run_dir: Path = RUN_DIR
) -> subprocess.Popen[bytes]:
    """Start the supervisor detached; its JSON logs go to ``supervisor.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "supervisor.log").open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.devstack.supervisor",
                "--stack",
                str(stack_file),
                "--run-dir",
                str(run_dir),
            ],
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def stop_supervisor(run_dir: Path = RUN_DIR, timeout_s: float = 20.0) -> bool:
    """SIGTERM the supervisor (it stops its processes) and wait; False if none ran."""
    pid = supervisor_pid(run_dir)
    if pid is None:
        return False
    _kill(pid, signal.SIGTERM)
    if not wait_gone([pid], timeout_s):
        _kill(pid, signal.SIGKILL)
        wait_gone([pid], 5.0)
    (run_dir / "supervisor.pid").unlink(missing_ok=True)
    return True


def _ago(at: float | None) -> str:
    return "" if at is None else f" {max(0.0, time.time() - at):.0f} s ago"


def describe(spec: ProcessSpec, run_dir: Path = RUN_DIR) -> str:
    """One line for ``rdv ps``: state, pid, and restarts with the last exit if any."""
    pid = pid_of(spec, run_dir)
    if pid is None:
        text = "stopped"
    else:
        text = f"{'ready' if ready(spec.ready) else 'running, not ready'} (pid {pid})"
    state = read_state(run_dir, spec.name)
    if state is None:
        return text
    if pid is None and state.status == "backoff":
        text = "restarting"
    if state.restarts or state.status == "backoff":
        text += f", restarts {state.restarts}"
        if state.last_exit is not None:
            text += f", last exit: {state.last_exit}{_ago(state.last_exit_at)}"
            if state.last_reason:
                text += f" ({state.last_reason})"
    return text


def status(specs: list[ProcessSpec], run_dir: Path = RUN_DIR) -> list[tuple[str, str]]:
    """(name, description) per process; the description starts with 'ready',
    'running, not ready', 'restarting' or 'stopped'."""
    return [(spec.name, describe(spec, run_dir)) for spec in specs]

"""Starting and stopping the local stack under its supervisor: waiting for each process
to be ready while saying what it is doing (from its state file and its last log line),
and stopping everything (supervisor first, so nothing is restarted)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml

from services.common.errors import BrokerSetupError
from services.devstack import stack
from services.devstack.stack import ProcessSpec, pid_of, ready, stop_all, stop_supervisor, tail
from services.devstack.supervision import read_state

PROGRESS_EVERY_S = 5.0
START_TIMEOUT_S = 300.0  # a chat worker's first start converts its weights
DOING = {
    "worker starting": "creating topics, loading the model",
    "ops server listening": "loading the model",
    "model loaded": "joining the consumer group",
}
"""What a process is doing, by the message of its last log line."""


def wait_ready(
    spec: ProcessSpec,
    fresh: bool,
    progress: Callable[[float, str], None],
    timeout_s: float = START_TIMEOUT_S,
) -> tuple[int, float]:
    """Wait until ``spec`` answers on its readiness URL: its pid and how long it took to
    start. ``progress(seconds_up, what_it_is_doing)`` is called every PROGRESS_EVERY_S
    meanwhile. A process that exits while starting (under a supervisor this run
    started: ``fresh``) or is not ready within ``timeout_s`` is a BrokerSetupError
    with the last lines of its log."""
    began = time.monotonic()
    baseline = 0 if fresh else restarts(spec)
    said = began
    while True:
        state = read_state(stack.RUN_DIR, spec.name)
        if state is not None and state.pid is not None and ready(spec.ready):
            started = state.started_at or time.time()
            return state.pid, max(0.0, time.time() - started)
        if state is not None and (state.status == "backoff" or state.restarts > baseline):
            raise BrokerSetupError(
                f"{spec.name} exited during start-up ({state.last_exit}"
                f"{': ' + state.last_reason if state.last_reason else ''}); last lines of "
                f"{log_name(spec)}:\n{tail(stack.RUN_DIR / f'{spec.name}.log')}"
            )
        if time.monotonic() - began > timeout_s:
            raise BrokerSetupError(
                f"{spec.name} was not ready at {spec.ready} within {timeout_s:.0f} s; last "
                f"lines of {log_name(spec)}:\n{tail(stack.RUN_DIR / f'{spec.name}.log')}"
            )
        if time.monotonic() - said >= PROGRESS_EVERY_S:
            said = time.monotonic()
            since = state.started_at if state is not None else None
            up_s = time.time() - since if since is not None else time.monotonic() - began
            progress(up_s, doing(spec, since))
        time.sleep(0.2)  # polling another process's readiness URL


def shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(stack.PROJECT_ROOT))
    except ValueError:
        return str(path)


def log_name(spec: ProcessSpec) -> str:
    """The process's log file, relative to the repository when inside it."""
    return shown(stack.RUN_DIR / f"{spec.name}.log")


def restarts(spec: ProcessSpec) -> int:
    state = read_state(stack.RUN_DIR, spec.name)
    return 0 if state is None else state.restarts


def doing(spec: ProcessSpec, since: float | None) -> str:
    """What the process is doing, from its last JSON log line since ``since``."""
    if since is None:
        return "waiting for the process before it"
    message = _last_message(stack.RUN_DIR / f"{spec.name}.log", since)
    if message is None:
        return "starting the interpreter, importing"
    if message in ("worker starting", "ops server listening") and _converts_gguf(spec):
        return "converting the GGUF weights: first start only"
    if message in DOING:
        return DOING[message]
    return f"last log: {message if len(message) <= 60 else message[:57] + '...'}"


def _last_message(path: Path, since: float) -> str | None:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
            at = datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        return str(record.get("msg")) if at >= since - 1 else None
    return None


def _converts_gguf(spec: ProcessSpec) -> bool:
    """A chat worker (llama-chat runtime) whose conversion cache is still empty."""
    if "--model" not in spec.command:
        return False
    model = stack.PROJECT_ROOT / spec.command[spec.command.index("--model") + 1]
    try:
        data = yaml.safe_load(model.read_text())
        runtime, params = data.get("runtime"), data.get("params") or {}
        cache = Path(params.get("cache_root") or stack.PROJECT_ROOT / ".rdv/cache/models")
    except (OSError, yaml.YAMLError, AttributeError, TypeError):
        return False
    return runtime == "llama-chat" and not any(cache.glob("*/rendezvous-entry.json"))


def stop_everything(specs: list[ProcessSpec]) -> dict[str, bool]:
    """Supervisor first (nothing is restarted), then whatever it left running."""
    live = {spec.name: pid_of(spec) is not None for spec in specs}
    stop_supervisor()
    left = stop_all(specs)
    return {name: was or left[name] for name, was in live.items()}

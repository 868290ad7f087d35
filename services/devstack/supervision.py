"""What the supervisor decides and records, without processes: back-off, exit reasons, state files.

A process that exits is restarted after ``Backoff.delay(failures)``: ``first_s``, then
doubling, capped at ``cap_s``. ``failures`` counts exits in a row; an exit after the
process stayed up ``reset_after_s`` or longer counts as the first again.

State file ``<run dir>/<name>.state.json`` (written whole and renamed into place, so a
reader never sees half of one), one JSON object::

    {"name": "gateway", "pid": 4242, "status": "running",
     "started_at": 1764780000.5, "restarts": 1,
     "last_exit": "killed by SIGKILL", "last_exit_code": -9,
     "last_exit_at": 1764779999.9, "last_reason": "gateway failed: ...",
     "next_start_at": null}

``pid`` is the current (or last) process; ``status`` is ``pending`` (not started yet),
``running``, ``backoff`` (exited; restarted at ``next_start_at``) or ``stopped``
(stopped by ``rdv down``). Times are epoch seconds; ``last_exit_code`` is the exit code,
or minus the signal number; ``last_reason`` is the last error line of the process's log
before it exited (null if none). ``<name>.pid`` holds the same pid as plain text and is
rewritten on every restart.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

STATUSES = ("pending", "running", "backoff", "stopped")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit): ")
_PROG_LINE = re.compile(r"^python -m [\w.]+: ")
REASON_CHARS = 200


@dataclass(frozen=True)
class Backoff:
    """Restart delays: first_s, doubling per exit in a row, at most cap_s."""

    first_s: float = 0.5
    cap_s: float = 4.0
    reset_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.first_s <= self.cap_s or self.reset_after_s <= 0:
            raise ValueError(f"invalid back-off {self}")

    def failures_after_exit(self, failures: int, uptime_s: float) -> int:
        """Exits in a row, counting this one: a long run starts the count again."""
        return 1 if uptime_s >= self.reset_after_s else failures + 1

    def delay(self, failures: int) -> float:
        """Seconds to wait before the restart that follows ``failures`` exits in a row."""
        if failures <= 0:
            return 0.0
        return float(min(self.cap_s, self.first_s * 2 ** min(failures - 1, 30)))


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` (Popen's negative code is a signal)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


def _json_error(line: str) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("level") not in ("error", "critical"):
        return None
    text = str(record.get("msg", ""))
    detail = record.get("error") or _last_line(str(record.get("exc", "")))
    return f"{text}: {detail}" if detail else text


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _plain_error(line: str) -> bool:
    """A traceback's last line (``ValueError: ...``) or a service's ``python -m x: ...``."""
    return _EXCEPTION_LINE.match(line) is not None or _PROG_LINE.match(line) is not None


def last_error(log_text: str) -> str | None:
    """The last error a process logged: a JSON line at level error or critical, or a
    plain ``Name: message`` line (a traceback's end, an argparse error); None if none."""
    for raw in reversed(log_text.splitlines()):
        line = raw.strip()
        if not line:
            continue
        plain = line if _plain_error(line) else None
        found = _json_error(line) if line.startswith("{") else plain
        if found:
            return found if len(found) <= REASON_CHARS else found[: REASON_CHARS - 3] + "..."
    return None


@dataclass
class ProcessState:
    """One process as the supervisor last saw it (the state file's content)."""

    name: str
    pid: int | None = None
    status: str = "pending"
    started_at: float | None = None
    restarts: int = 0
    last_exit: str | None = None
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    last_reason: str | None = None
    next_start_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ProcessState:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("not a process state")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if known.get("status", "pending") not in STATUSES:
            raise ValueError(f"unknown status {known.get('status')!r}")
        return cls(**known)


def state_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.state.json"


def write_atomic(path: Path, text: str) -> None:
    """Write a file whole: a temporary file renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_state(run_dir: Path, state: ProcessState) -> None:
    write_atomic(state_path(run_dir, state.name), state.to_json())


def read_state(run_dir: Path, name: str) -> ProcessState | None:
    """The state file of ``name``; None if there is none or it cannot be read."""
    try:
        return ProcessState.from_json(state_path(run_dir, name).read_text())
    except (OSError, ValueError, TypeError):
        return None

"""``python -m services.devstack.supervisor``: run the stack's processes and restart any that exits.

``rdv up`` starts this process detached and waits for the stack's readiness URLs;
``rdv down`` sends it SIGTERM: it stops restarting, sends SIGTERM to every process at
once, waits for them together (SIGKILL after ``--grace`` seconds) and exits. Processes
start in the stack file's order, each once the one before it is ready (or has had
``--start-timeout`` seconds), so first starts do not compete for the CPU.

A process that exits is started again after a back-off (``supervision.Backoff``:
0.5 s, doubling, at most 4 s; counted anew after 30 s up). Files in the run dir:

- ``supervisor.pid``, ``supervisor.log`` (this process's JSON log lines);
- per process ``<name>.pid`` (the current pid, rewritten on each restart),
  ``<name>.log`` (its output, appended) and ``<name>.state.json`` (pid, status,
  restarts, last exit and reason; the format is in ``services.devstack.supervision``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ConfigError
from services.common.logs import configure_logging
from services.devstack import stack
from services.devstack.supervision import (
    Backoff,
    ProcessState,
    describe_exit,
    last_error,
    write_atomic,
    write_state,
)

log = logging.getLogger("rdv.supervisor")
TAIL_BYTES = 64 * 1024  # how much of a log is read for an exit's reason


@dataclass
class Child:
    spec: stack.ProcessSpec
    state: ProcessState
    proc: subprocess.Popen[bytes] | None = None
    spawned: float = 0.0  # monotonic
    failures: int = 0  # exits in a row
    restart_at: float | None = None  # monotonic
    log_offset: int = 0  # the log's size when the current process started


class Supervisor:
    """Starts ``specs`` in order, restarts those that exit, stops them all on request."""

    def __init__(
        self,
        specs: Sequence[stack.ProcessSpec],
        run_dir: Path,
        env: dict[str, str],
        *,
        backoff: Backoff | None = None,
        start_timeout_s: float = 300.0,
        grace_s: float = 10.0,
    ) -> None:
        self.children = [Child(spec, ProcessState(spec.name)) for spec in specs]
        self.run_dir = run_dir
        self.env = env
        self.backoff = backoff or Backoff()
        self.start_timeout_s = start_timeout_s
        self.grace_s = grace_s
        self.stopping = False
        self._next = 0  # the next child to start for the first time
        self._gate_since = time.monotonic()
        self._wake: int | None = None  # read end of the signal wake-up pipe

    def stop(self, *_: object) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        self.stopping = True

    def run(self) -> int:
        """Supervise until stopped; then stop every process and return 0."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        signal.set_wakeup_fd(wake_w)
        self._wake = wake_r
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only wakes the select below
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            write_state(self.run_dir, child.state)
        log.info("supervisor started", extra={"processes": [c.spec.name for c in self.children]})
        while not self.stopping:
            try:
                self.step()
            except OSError:  # a full disk, a vanished run dir: keep supervising
                log.exception("supervisor step failed")
            self._sleep(self._wait_s())
        self.shutdown()
        return 0

    def _sleep(self, seconds: float) -> None:
        """Wait up to ``seconds``; any handled signal (SIGCHLD, SIGTERM) ends it early."""
        if self._wake is None:
            time.sleep(seconds)  # not in run(): no signal pipe to wait on
            return
        select.select([self._wake], [], [], seconds)
        _drain(self._wake)

    def step(self) -> None:
        """One pass: note exits, restart what is due, start the next process in order."""
        for child in self.children:
            if child.proc is not None and (code := child.proc.poll()) is not None:
                self._exited(child, code)
        now = time.monotonic()
        for child in self.children:
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.state.restarts += 1
                self._spawn(child)
        self._start_next()

    def _wait_s(self) -> float:
        """How long the loop may sleep: until the next restart, shorter while starting."""
        wait = 0.2 if self._next < len(self.children) else 2.0
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None:
                wait = min(wait, max(0.0, child.restart_at - now))
        return wait

    def _start_next(self) -> None:
        if self._next >= len(self.children):
            return
        if self._next > 0:
            previous = self.children[self._next - 1]
            waited = time.monotonic() - self._gate_since
            if waited < self.start_timeout_s and not stack.ready(previous.spec.ready):
                return
        self._spawn(self.children[self._next])
        self._next += 1
        self._gate_since = time.monotonic()

    def _spawn(self, child: Child) -> None:
        name = child.spec.name
        out_path = self.run_dir / f"{name}.log"
        child.log_offset = out_path.stat().st_size if out_path.exists() else 0
        child.spawned = time.monotonic()
        child.restart_at = None
        try:
            with out_path.open("ab") as out:
                child.proc = subprocess.Popen(
                    stack.argv(child.spec),
                    cwd=stack.PROJECT_ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**self.env, **child.spec.env},
                    start_new_session=True,
                )
        except OSError as exc:
            log.error("process cannot start", extra={"child": name, "error": str(exc)})
            self._exited(child, 127, reason=f"cannot start: {exc}")
            return
        pid = child.proc.pid
        write_atomic(self.run_dir / f"{name}.pid", str(pid))
        child.state.pid, child.state.status = pid, "running"
        child.state.started_at, child.state.next_start_at = time.time(), None
        write_state(self.run_dir, child.state)
        log.info(
            "process started",
            extra={"child": name, "pid": pid, "restarts": child.state.restarts},
        )

    def _exited(self, child: Child, code: int, reason: str | None = None) -> None:
        uptime = time.monotonic() - child.spawned
        child.failures = self.backoff.failures_after_exit(child.failures, uptime)
        delay = self.backoff.delay(child.failures)
        child.proc = None
        child.restart_at = time.monotonic() + delay
        state = child.state
        state.status, state.last_exit, state.last_exit_code = "backoff", describe_exit(code), code
        state.last_exit_at, state.next_start_at = time.time(), time.time() + delay
        state.last_reason = reason or last_error(self._log_since_start(child))
        write_state(self.run_dir, state)
        log.warning(
            "process exited",
            extra={
                "child": child.spec.name,
                "pid": state.pid,
                "exit": state.last_exit,
                "reason": state.last_reason,
                "uptime_s": round(uptime, 3),
                "restart_in_s": delay,
            },
        )

    def _log_since_start(self, child: Child) -> str:
        try:
            with (self.run_dir / f"{child.spec.name}.log").open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(child.log_offset, size - TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def shutdown(self) -> None:
        """SIGTERM to every process at once, wait for all together, SIGKILL after grace_s."""
        began = time.monotonic()
        live = [c for c in self.children if c.proc is not None]
        log.info("supervisor stopping", extra={"processes": [c.spec.name for c in live]})
        for child in live:
            _signal(child, signal.SIGTERM)
        pending = list(live)
        killed = False
        while pending:
            pending = [c for c in pending if c.proc is not None and c.proc.poll() is None]
            for child in live:
                if child.proc is not None and child.proc.returncode is not None:
                    self._stopped(child, child.proc.returncode, time.monotonic() - began)
            if pending and not killed and time.monotonic() - began > self.grace_s:
                for child in pending:
                    log.warning("process did not stop in time", extra={"child": child.spec.name})
                    _signal(child, signal.SIGKILL)
                killed = True
            if pending:
                self._sleep(0.1)  # SIGCHLD wakes it as soon as a child exits
        for child in self.children:
            (self.run_dir / f"{child.spec.name}.pid").unlink(missing_ok=True)
            if child.state.status != "stopped":
                child.state.status, child.state.next_start_at = "stopped", None
                write_state(self.run_dir, child.state)
        (self.run_dir / "supervisor.pid").unlink(missing_ok=True)
        log.info("supervisor stopped", extra={"took_s": round(time.monotonic() - began, 3)})

    def _stopped(self, child: Child, code: int, took_s: float) -> None:
        child.proc = None
        state = child.state
        state.status, state.next_start_at = "stopped", None
        state.last_exit, state.last_exit_code, state.last_exit_at = (
            describe_exit(code),
            code,
            time.time(),
        )
        write_state(self.run_dir, state)
        (self.run_dir / f"{child.spec.name}.pid").unlink(missing_ok=True)
        log.info(
            "process stopped",
            extra={"child": child.spec.name, "exit": state.last_exit, "took_s": round(took_s, 3)},
        )


def _signal(child: Child, signum: int) -> None:
    if child.proc is not None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signum)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.devstack.supervisor", description=__doc__
    )
    parser.add_argument("--stack", type=Path, default=stack.STACK_FILE, help="the stack file")
    parser.add_argument("--run-dir", type=Path, default=stack.RUN_DIR, help="pids, logs, state")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds per start")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    args = parser.parse_args(argv)
    configure_logging("supervisor")
    try:
        specs = stack.load_stack(args.stack)
    except ConfigError as exc:
        log.error("supervisor cannot start", extra={"error": str(exc)})
        return 2
    args.run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.run_dir / "supervisor.pid", str(os.getpid()))
    supervisor = Supervisor(
        specs,
        args.run_dir,
        dict(os.environ),
        start_timeout_s=args.start_timeout,
        grace_s=args.grace,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

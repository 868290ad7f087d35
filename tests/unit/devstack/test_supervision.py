"""The supervisor's decisions: back-off, exit descriptions, reasons from logs, state files,
and its restart and stop behaviour on real (tiny, local) processes; no broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.devstack import stack
from services.devstack.stack import ProcessSpec
from services.devstack.supervision import (
    Backoff,
    ProcessState,
    describe_exit,
    last_error,
    read_state,
    state_path,
    write_state,
)
from services.devstack.supervisor import Supervisor

# --- back-off -----------------------------------------------------------------------


def test_backoff_doubles_from_first_and_stops_at_the_cap() -> None:
    backoff = Backoff(first_s=0.5, cap_s=4.0)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(10_000) == 4.0  # no overflow after a long crash loop


def test_exits_in_a_row_count_up_and_a_long_run_starts_again() -> None:
    backoff = Backoff(reset_after_s=30.0)
    failures = 0
    for _ in range(3):
        failures = backoff.failures_after_exit(failures, uptime_s=1.0)
    assert failures == 3
    assert backoff.failures_after_exit(failures, uptime_s=30.0) == 1
    assert backoff.delay(backoff.failures_after_exit(failures, uptime_s=45.0)) == 0.5


@pytest.mark.parametrize(
    ("first", "cap", "reset"), [(-1.0, 4.0, 30.0), (5.0, 4.0, 30.0), (0.5, 4.0, 0.0)]
)
def test_backoff_refuses_nonsense(first: float, cap: float, reset: float) -> None:
    with pytest.raises(ValueError, match="invalid back-off"):
        Backoff(first_s=first, cap_s=cap, reset_after_s=reset)


# --- exits and reasons --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "exit code 0"),
        (2, "exit code 2"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (-200, "killed by signal 200"),
    ],
)
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text


def _json(level: str, msg: str, **fields: object) -> str:
    return json.dumps({"ts": "2026-12-03T10:00:00.000Z", "level": level, "msg": msg, **fields})


def test_last_error_is_the_last_json_error_line_with_its_error_field() -> None:
    log = "\n".join(
        [
            _json("error", "old failure", error="first"),
            _json("error", "rendezvous failed", error="[delivery_failed] no.such.topic"),
            _json("info", "consumer closed"),
            "",
        ]
    )
    assert last_error(log) == "rendezvous failed: [delivery_failed] no.such.topic"


def test_last_error_takes_an_exception_s_last_line() -> None:
    exc = 'Traceback (most recent call last):\n  File "x.py"\nValueError: ticket finished twice'
    log = _json("critical", "worker failed", exc=exc)
    assert last_error(log) == "worker failed: ValueError: ticket finished twice"


def test_last_error_reads_plain_tracebacks_and_prog_lines() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/x/loop.py", line 3, in run\n'
        "    raise KafkaException(err)\n"
        "cimpl.KafkaException: _UNKNOWN_PARTITION\n"
    )
    assert last_error(traceback) == "cimpl.KafkaException: _UNKNOWN_PARTITION"
    assert last_error("python -m services.workers: no model: give --model\n") == (
        "python -m services.workers: no model: give --model"
    )


def test_no_error_in_a_clean_log_means_no_reason() -> None:
    assert last_error("") is None
    assert last_error(_json("info", "ops server listening") + "\nnot json {\n") is None


def test_a_long_reason_is_cut() -> None:
    reason = last_error(_json("error", "x" * 500))
    assert reason is not None
    assert len(reason) == 200
    assert reason.endswith("...")


# --- state files --------------------------------------------------------------------


def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    state = ProcessState(
        "gateway", pid=42, status="backoff", restarts=2, last_exit="killed by SIGKILL"
    )
    state.last_exit_code, state.last_reason = -9, None
    write_state(tmp_path, state)
    assert read_state(tmp_path, "gateway") == state
    assert json.loads(state_path(tmp_path, "gateway").read_text())["restarts"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["gateway.state.json"]  # no temp left


@pytest.mark.parametrize(
    "text", ["", "not json", "[]", '{"name": 3}', '{"name": "x", "status": "dancing"}']
)
def test_an_unreadable_state_file_is_no_state(tmp_path: Path, text: str) -> None:
    state_path(tmp_path, "x").write_text(text)
    assert read_state(tmp_path, "x") is None


# --- the supervisor on real tiny processes ------------------------------------------


def _until(condition: Callable[[], bool], timeout_s: float, step: Callable[[], None]) -> None:
    until = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < until, "condition not met in time"
        step()
        time.sleep(0.05)  # polling the supervisor's children, bounded above


def _spec(name: str, code: str) -> ProcessSpec:
    return ProcessSpec(name=name, command=[sys.executable, "-c", code], ready="http://127.0.0.1:1/")


def test_a_process_that_exits_is_restarted_with_back_off_and_its_reason(tmp_path: Path) -> None:
    code = "import sys; print('RuntimeError: no weights', file=sys.stderr); sys.exit(4)"
    supervisor = Supervisor(
        [_spec("crashy", code)], tmp_path, {}, backoff=Backoff(first_s=0.2, cap_s=0.4)
    )
    supervisor.step()
    first_pid = int((tmp_path / "crashy.pid").read_text())

    def state() -> ProcessState:
        found = read_state(tmp_path, "crashy")
        assert found is not None
        return found

    _until(lambda: state().restarts >= 2, 20.0, supervisor.step)
    seen = state()
    assert seen.last_exit == "exit code 4"
    assert seen.last_exit_code == 4
    assert seen.last_reason == "RuntimeError: no weights"
    assert int((tmp_path / "crashy.pid").read_text()) not in (first_pid, None)
    assert supervisor.children[0].failures >= 2  # exits in a row: the delay grew
    supervisor.shutdown()
    assert state().status == "stopped"
    assert not (tmp_path / "crashy.pid").exists()


TERM_THEN_SLOW = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def term(*_):
    out.with_suffix('.term').write_text(repr(time.time()))
    time.sleep(0.5)
    out.with_suffix('.exit').write_text(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
out.with_suffix('.up').write_text('1')
while True:
    time.sleep(1)
"""


def _slow_stopper(name: str, folder: Path) -> ProcessSpec:
    return ProcessSpec(
        name=name,
        command=[sys.executable, "-c", TERM_THEN_SLOW, str(folder / name)],
        ready="http://127.0.0.1:1/",
    )


def _stopped_in_parallel(folder: Path, names: list[str]) -> None:
    terms = [float((folder / f"{n}.term").read_text()) for n in names]
    exits = [float((folder / f"{n}.exit").read_text()) for n in names]
    assert max(terms) < min(exits), "a process got SIGTERM only after another had exited"


def test_shutdown_signals_every_process_before_waiting_for_any(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    supervisor = Supervisor(
        [_slow_stopper(n, tmp_path) for n in names], tmp_path, {}, start_timeout_s=0.0
    )
    _until(lambda: all((tmp_path / f"{n}.up").exists() for n in names), 20.0, supervisor.step)
    supervisor.shutdown()
    _stopped_in_parallel(tmp_path, names)
    states = [read_state(tmp_path, n) for n in names]
    assert [(s.status, s.last_exit) for s in states if s is not None] == [
        ("stopped", "exit code 0")
    ] * 3


def test_stop_all_without_a_supervisor_stops_in_parallel(tmp_path: Path) -> None:
    """What ``rdv down`` does with processes whose supervisor is gone."""
    names = ["a", "b"]
    specs = [_slow_stopper(n, tmp_path) for n in names]
    procs = [subprocess.Popen(stack.argv(spec), start_new_session=True) for spec in specs]
    for spec, proc in zip(specs, procs, strict=True):
        (tmp_path / f"{spec.name}.pid").write_text(str(proc.pid))
    try:
        _until(lambda: all((tmp_path / f"{n}.up").exists() for n in names), 20.0, lambda: None)
        assert stack.stop_all(specs, tmp_path, timeout_s=10.0) == {"a": True, "b": True}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    _stopped_in_parallel(tmp_path, names)
    assert [p.returncode for p in procs] == [0, 0]
    assert stack.stop_all(specs, tmp_path) == {"a": False, "b": False}

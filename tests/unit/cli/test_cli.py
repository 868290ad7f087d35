"""The ``rdv`` command line without a broker: its parser, ``rdv kafka`` and ``rdv ps``.

Nothing here starts Java or Kafka: Java is missing, the broker's state folder and jar
cache live under tmp_path, and an external bootstrap points at a closed port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.cli.main import build_parser, main
from services.devstack.stack import load_stack, status
from services.devstack.supervision import ProcessState, write_state
from tests.conftest import free_port_pair

pytestmark = pytest.mark.usefixtures("isolated_broker")
CLOSED = "127.0.0.1:1"  # nothing listens on port 1

# --- the parser ---------------------------------------------------------------------


@pytest.mark.parametrize("action", ["start", "stop", "status", "fetch"])
def test_parser_accepts_every_action(action: str) -> None:
    args = build_parser().parse_args(["kafka", action])
    assert args.command == "kafka"
    assert args.action == action
    assert args.port == 9092
    assert args.timeout == 90.0
    assert args.verbose is False


def test_parser_reads_options() -> None:
    args = build_parser().parse_args(
        ["kafka", "start", "--port", "19092", "--timeout", "2.5", "--verbose"]
    )
    assert (args.port, args.timeout, args.verbose) == (19092, 2.5, True)


def test_port_default_comes_from_rdv_kafka_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_KAFKA_PORT", "29092")
    assert build_parser().parse_args(["kafka", "status"]).port == 29092


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["kafka", "restart"], "invalid choice: 'restart'"),
        (["kafka"], "required: action"),
        ([], "required: command"),
        (["zookeeper", "start"], "invalid choice: 'zookeeper'"),
        (["kafka", "start", "--port", "abc"], "invalid int value: 'abc'"),
        (["kafka", "start", "--timeout", "soon"], "invalid float value: 'soon'"),
    ],
    ids=["unknown-action", "no-action", "no-command", "unknown-command", "bad-port", "bad-timeout"],
)
def test_parser_rejects_bad_arguments(
    capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert complaint in captured.err
    assert captured.out == ""


# --- rdv kafka status / stop / start without a broker -----------------------------------


def test_status_on_an_unused_port_is_stopped_with_exit_code_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port_pair()
    assert main(["kafka", "status", "--port", str(port)]) == 3
    out = capsys.readouterr().out
    assert "stopped" in out
    assert f"127.0.0.1:{port}" in out
    assert str(tmp_path / "project" / ".rdv" / f"kafka-{port}") in out
    assert "not fetched yet" in out


def test_stop_when_nothing_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kafka", "stop", "--port", str(free_port_pair())]) == 0
    assert "was not running" in capsys.readouterr().out


def test_start_with_an_external_bootstrap_that_does_not_answer_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP", CLOSED)
    assert main(["kafka", "start", "--timeout", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("rdv: [kafka_unavailable]")
    assert f"no Kafka broker answered on {CLOSED}" in captured.err


def test_stop_with_an_external_bootstrap_touches_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP", CLOSED)
    assert main(["kafka", "stop"]) == 0
    out = capsys.readouterr().out
    assert f"RDV_KAFKA_BOOTSTRAP={CLOSED} is set" in out
    assert "nothing started or stopped" in out


def test_start_without_java_exits_2_naming_java_17(
    no_java: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["kafka", "start", "--port", str(free_port_pair()), "--timeout", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("rdv: [broker_setup]")
    assert "Java 17+" in captured.err
    assert not (tmp_path / "project").exists()  # failed before writing any state


def test_start_on_a_taken_port_exits_2(
    listening_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kafka", "start", "--port", str(listening_port), "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert f"port {listening_port} on 127.0.0.1 is taken" in err
    assert "--port" in err


def test_fetch_without_maven_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["kafka", "fetch"]) == 2
    assert "Maven (mvn) is needed" in capsys.readouterr().err


# --- rdv ps ---------------------------------------------------------------------------


def _tiny_stack(folder: Path) -> Path:
    path = folder / "stack.yaml"
    path.write_text(
        "processes:\n"
        "  - {name: one, command: [python, -c, 'pass'], ready: 'http://127.0.0.1:1/'}\n"
        "  - {name: two, command: [python, -c, 'pass'], ready: 'http://127.0.0.1:1/'}\n"
    )
    return path


def test_ps_into_a_pipe_whose_reader_left_ends_without_a_traceback(tmp_path: Path) -> None:
    """``rdv ps | head``: head exits; rdv must end quietly (exit 141, as on SIGPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before rdv writes a byte
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "ps",
                "--port",
                str(free_port_pair()),
                "--stack",
                str(_tiny_stack(tmp_path)),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "RDV_RUN_DIR": str(tmp_path / "run")},
            cwd=Path(__file__).resolve().parents[3],
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr.decode()
    assert "BrokenPipeError" not in proc.stderr.decode()
    assert proc.returncode == 141


def test_ps_shows_restarts_and_the_last_exit(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    state = ProcessState("two", pid=None, status="backoff", restarts=3)
    state.last_exit, state.last_exit_at = "exit code 1", time.time() - 5
    state.last_reason = "rendezvous failed: [delivery_failed] no.such.topic"
    write_state(run, state)
    specs = load_stack(_tiny_stack(tmp_path))
    rows = dict(status(specs, run))
    assert rows["one"] == "stopped"
    assert re.fullmatch(
        r"restarting, restarts 3, last exit: exit code 1 [5-9] s ago "
        r"\(rendezvous failed: \[delivery_failed\] no\.such\.topic\)",
        rows["two"],
    ), rows["two"]

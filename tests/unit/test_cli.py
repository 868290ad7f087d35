"""The ``rdv`` command line and the parts of the local broker that need no broker.

Nothing here starts Java or Kafka: Java is either missing or a tiny fake script, the
broker's state folder and jar cache live under tmp_path, and an external bootstrap
points at a closed port.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.main import build_parser, main
from services.common.errors import BrokerSetupError
from services.devstack import broker as localkafka
from services.devstack import stack, startup
from services.devstack.broker import LocalBroker
from services.devstack.stack import ProcessSpec, load_stack, status
from services.devstack.supervision import ProcessState, write_state

CLOSED = "127.0.0.1:1"  # nothing listens on port 1


def _free_port_pair() -> int:
    """A port p with p and p+1 free (the broker's client and controller ports)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not localkafka._port_in_use(port + 1):
            return port
    raise RuntimeError("no free pair of ports found")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No external broker, and broker state and jar cache under tmp_path, not the repo."""
    monkeypatch.delenv("RDV_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("RDV_KAFKA_PORT", raising=False)
    monkeypatch.setattr(localkafka, "PROJECT_ROOT", tmp_path / "project")
    monkeypatch.setattr(localkafka, "CACHE", tmp_path / "cache")


@pytest.fixture
def no_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-such-jdk"))


def _fake_java(folder: Path, version_line: str) -> Path:
    """An executable named java that prints ``version_line`` like ``java -version``."""
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return java


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another program (this socket) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


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
    port = _free_port_pair()
    assert main(["kafka", "status", "--port", str(port)]) == 3
    out = capsys.readouterr().out
    assert "stopped" in out
    assert f"127.0.0.1:{port}" in out
    assert str(tmp_path / "project" / ".rdv" / f"kafka-{port}") in out
    assert "not fetched yet" in out


def test_stop_when_nothing_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kafka", "stop", "--port", str(_free_port_pair())]) == 0
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
    assert main(["kafka", "start", "--port", str(_free_port_pair()), "--timeout", "1"]) == 2
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


# --- Java detection -------------------------------------------------------------------


def test_missing_java_home_raises_broker_setup_error(no_java: None) -> None:
    with pytest.raises(BrokerSetupError, match=r"Java 17\+ is needed") as info:
        localkafka._java()
    assert info.value.code == "broker_setup"
    assert "JAVA_HOME" in str(info.value)


def test_no_java_on_path_raises_broker_setup_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BrokerSetupError, match="Java 17"):
        localkafka._java()


@pytest.mark.parametrize(
    "version_line",
    [
        'openjdk version "17.0.9" 2023-10-17',
        'openjdk version "21" 2023-09-19',
        'java version "22.0.1" 2024-04-16',
    ],
)
def test_java_17_or_newer_is_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version_line: str
) -> None:
    java = _fake_java(tmp_path / "jdk" / "bin", version_line)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert localkafka._java() == str(java)


@pytest.mark.parametrize(
    ("version_line", "shown"),
    [
        ('java version "1.8.0_392"', "is Java 8"),
        ('openjdk version "11.0.21" 2023-10-17', "is Java 11"),
        ("something that is not a version", "is Java unknown"),
    ],
)
def test_older_or_unknown_java_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version_line: str, shown: str
) -> None:
    _fake_java(tmp_path / "jdk" / "bin", version_line)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(BrokerSetupError, match="needs Java 17") as info:
        localkafka._java()
    assert shown in str(info.value)


def test_java_is_found_on_path_without_java_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    java = _fake_java(tmp_path / "bin", 'openjdk version "17.0.2"')
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert localkafka._java() == str(java)


# --- jar cache ----------------------------------------------------------------------


def test_jars_cached_follows_the_pom_digest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_text("<project/>")
    monkeypatch.setattr(localkafka, "POM", pom)
    cache = tmp_path / "cache"
    assert localkafka.jars_dir() == cache / "lib"
    assert not localkafka.jars_cached()
    cache.mkdir()
    (cache / "pom.sha256").write_text(hashlib.sha256(b"<project/>").hexdigest() + "\n")
    assert localkafka.jars_cached()
    pom.write_text("<project><changed/></project>")
    assert not localkafka.jars_cached()


def test_fetch_is_a_no_op_when_the_cache_is_current(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(localkafka, "jars_cached", lambda: True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: it must not be needed
    assert localkafka.fetch_jars() == tmp_path / "cache" / "lib"


# --- the broker's files and state, without a broker -----------------------------------


def test_server_properties_use_the_given_ports_and_folder(tmp_path: Path) -> None:
    text = localkafka._server_properties(19092, 19093, tmp_path / "data")
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"


def test_cluster_id_is_a_fresh_22_character_base64_uuid() -> None:
    ids = {localkafka._cluster_id() for _ in range(20)}
    assert len(ids) == 20
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert set(cluster_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_port_in_use(listening_port: int) -> None:
    assert localkafka._port_in_use(listening_port)
    assert not localkafka._port_in_use(1)


def test_local_broker_paths(tmp_path: Path) -> None:
    broker = LocalBroker(port=19092, state_dir=tmp_path / "state")
    assert broker.bootstrap == "127.0.0.1:19092"
    assert broker.controller_port == 19093
    assert broker.log_file == tmp_path / "state" / "broker.log"


def test_default_state_dir_is_per_port() -> None:
    assert LocalBroker(port=19092).state_dir == localkafka.PROJECT_ROOT / ".rdv" / "kafka-19092"


@pytest.mark.parametrize(
    "content",
    ["not a pid", "", str(os.getpid()), "999999999"],
    ids=["garbage", "empty", "a-live-process-that-is-not-kafka", "no-such-process"],
)
def test_stale_pid_file_means_not_running(tmp_path: Path, content: str) -> None:
    broker = LocalBroker(port=_free_port_pair(), state_dir=tmp_path / "state")
    broker.state_dir.mkdir()
    pid_file = broker.state_dir / "broker.pid"
    pid_file.write_text(content)
    assert broker.pid() is None
    status = broker.status()
    assert not status.running
    assert status.pid is None
    assert status.state_dir == broker.state_dir
    assert pid_file.read_text() == content  # status only reads


def test_stop_with_a_stale_pid_file_removes_it(tmp_path: Path) -> None:
    broker = LocalBroker(port=_free_port_pair(), state_dir=tmp_path / "state")
    broker.state_dir.mkdir()
    pid_file = broker.state_dir / "broker.pid"
    pid_file.write_text("999999999")
    assert broker.stop() is False
    assert not pid_file.exists()
    assert broker.stop() is False  # idempotent without a pid file


def test_start_refuses_a_taken_controller_port(tmp_path: Path) -> None:
    port = _free_port_pair()
    broker = LocalBroker(port=port, state_dir=tmp_path / "state")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port + 1))
        sock.listen()
        with pytest.raises(BrokerSetupError, match=f"port {port + 1} on 127.0.0.1 is taken"):
            broker.start(timeout_s=1)
    assert not broker.state_dir.exists()


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
                str(_free_port_pair()),
                "--stack",
                str(_tiny_stack(tmp_path)),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "RDV_RUN_DIR": str(tmp_path / "run")},
            cwd=Path(__file__).resolve().parents[2],
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


# --- rdv up's progress lines ------------------------------------------------------------


def _log_line(msg: str, at: float) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + ".000Z"
    return json.dumps({"ts": ts, "level": "info", "msg": msg}) + "\n"


def test_progress_says_what_a_starting_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    spec = ProcessSpec(name="fast", command=["python", "-m", "x"], ready="http://127.0.0.1:1/")
    now = time.time()
    assert startup.doing(spec, None) == "waiting for the process before it"
    assert startup.doing(spec, now) == "starting the interpreter, importing"
    log = tmp_path / "fast.log"
    log.write_text(_log_line("model loaded", now - 600))  # an earlier run's line
    assert startup.doing(spec, now) == "starting the interpreter, importing"
    log.write_text(log.read_text() + _log_line("ops server listening", now) + "not json\n")
    assert startup.doing(spec, now) == "loading the model"
    log.write_text(log.read_text() + _log_line("GETPID " + "x" * 100, now))
    assert startup.doing(spec, now) == "last log: GETPID " + "x" * 50 + "..."


def test_progress_names_the_gguf_conversion_while_the_cache_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "RUN_DIR", tmp_path)
    cache = tmp_path / "cache"
    model = tmp_path / "chat.yaml"
    model.write_text(f"name: chat\nruntime: llama-chat\nparams: {{cache_root: {cache}}}\n")
    spec = ProcessSpec(
        name="chat", command=["python", "-m", "w", "--model", str(model)], ready="http://x/"
    )
    now = time.time()
    (tmp_path / "chat.log").write_text(_log_line("ops server listening", now))
    assert startup.doing(spec, now) == "converting the GGUF weights: first start only"
    (cache / "0123").mkdir(parents=True)
    (cache / "0123" / "rendezvous-entry.json").write_text("{}")
    assert startup.doing(spec, now) == "loading the model"

"""The local broker's parts that need no broker: Java detection, the jar cache, its
files and state (Java missing or a tiny fake script; state and cache under tmp_path)."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from pathlib import Path

import pytest

from services.common.errors import BrokerSetupError
from services.devstack import broker as localkafka
from services.devstack.broker import LocalBroker
from tests.conftest import free_port_pair

pytestmark = pytest.mark.usefixtures("isolated_broker")


def _fake_java(folder: Path, version_line: str) -> Path:
    """An executable named java that prints ``version_line`` like ``java -version``."""
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR)
    return java


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
    broker = LocalBroker(port=free_port_pair(), state_dir=tmp_path / "state")
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
    broker = LocalBroker(port=free_port_pair(), state_dir=tmp_path / "state")
    broker.state_dir.mkdir()
    pid_file = broker.state_dir / "broker.pid"
    pid_file.write_text("999999999")
    assert broker.stop() is False
    assert not pid_file.exists()
    assert broker.stop() is False  # idempotent without a pid file


def test_start_refuses_a_taken_controller_port(tmp_path: Path) -> None:
    port = free_port_pair()
    broker = LocalBroker(port=port, state_dir=tmp_path / "state")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port + 1))
        sock.listen()
        with pytest.raises(BrokerSetupError, match=f"port {port + 1} on 127.0.0.1 is taken"):
            broker.start(timeout_s=1)
    assert not broker.state_dir.exists()


# --- rdv ps ---------------------------------------------------------------------------

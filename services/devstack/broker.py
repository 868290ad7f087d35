"""A real single-node Apache Kafka broker (KRaft) for development, tests and benchmarks.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` into the git-ignored
cache ``.rdv/cache/kafka/lib``; broker state (data, log, pid) lives in a git-ignored
folder per port, ``.rdv/kafka-<port>/``. Every operation is idempotent.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import BrokerSetupError, KafkaUnavailableError
from services.common.kafka import wait_for_broker

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
LOG_CONFIG = PROJECT_ROOT / "deploy" / "kafka" / "log4j2.properties"
CACHE = PROJECT_ROOT / ".rdv" / "cache" / "kafka"
MIN_JAVA = 17


@dataclass(frozen=True)
class BrokerStatus:
    """What ``rdv kafka status`` reports."""

    running: bool
    pid: int | None
    bootstrap: str
    state_dir: Path
    jars_cached: bool


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerSetupError(
            f"Java {MIN_JAVA}+ is needed to run the local Kafka broker and none was found "
            "(install a JDK, e.g. 'apt-get install openjdk-17-jre-headless', or set JAVA_HOME)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerSetupError(
            f"Kafka 4.x needs Java {MIN_JAVA}+, but {java} is Java {major or 'unknown'}"
        )
    return java


def jars_dir() -> Path:
    """The folder of cached broker jars (may not exist yet)."""
    return CACHE / "lib"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def jars_cached() -> bool:
    stamp = CACHE / "pom.sha256"
    return stamp.exists() and stamp.read_text().strip() == _pom_digest()


def fetch_jars(*, quiet: bool = True) -> Path:
    """Copy Kafka and its runtime dependencies into the cache; no-op when current."""
    if jars_cached():
        return jars_dir()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerSetupError(
            "Maven (mvn) is needed once to fetch the Kafka jars from Maven Central "
            "and was not found (install it, e.g. 'apt-get install maven')"
        )
    staging = CACHE / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    if quiet:
        cmd.insert(1, "-q")
    done = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout or "")[-2000:] if quiet else ""
        raise BrokerSetupError(f"fetching the Kafka jars with Maven failed:\n{tail}")
    shutil.rmtree(jars_dir(), ignore_errors=True)
    staging.rename(jars_dir())
    (CACHE / "pom.sha256").write_text(_pom_digest())
    return jars_dir()


def _server_properties(
    port: int, controller_port: int, data_dir: Path, overrides: Mapping[str, str] | None = None
) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # Topics are declared in deploy/kafka/topics.yaml and created by the services.
        "auto.create.topics.enable": "false",
        # One node: every internal topic has one replica, and few partitions so that
        # the first consumer group does not wait for 50 offsets partitions.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "2",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "2",
        "group.initial.rebalance.delay.ms": "0",
        # Fast failover (docs/benchmarks.md, "Fast failover"): a member that died is
        # noticed within about a second. Classic groups may ask for sessions down to
        # 1 s; KIP-848 groups (group.protocol=consumer) get 1.5 s and a 0.5 s heartbeat.
        "group.min.session.timeout.ms": "1000",
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.session.timeout.ms": "1500",
        "group.consumer.min.heartbeat.interval.ms": "250",
        "group.consumer.heartbeat.interval.ms": "500",
        "num.network.threads": "2",
        "num.io.threads": "4",
        **(overrides or {}),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _cluster_id(raw: bytes | None = None) -> str:
    """A cluster id for ``kafka-storage format -t``: URL-safe base64 of 16 random bytes
    (``raw`` if given), never starting with ``-`` (read as an option there; Kafka's own
    ids never start with it). The first byte's top bit is cleared, so the first
    character is one of ``A``-``Z``, ``a``-``f``."""
    data = uuid.uuid4().bytes if raw is None else raw
    if len(data) != 16:
        raise ValueError(f"a cluster id takes 16 bytes, not {len(data)}")
    data = bytes([data[0] & 0x7F]) + data[1:]
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


JVM_OPTIONS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")
"""The broker JVM's GC flags unless RDV_KAFKA_JVM_OPTS or ``jvm_options`` say otherwise."""


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LocalBroker:
    """One broker process on 127.0.0.1:``port`` with its state under ``state_dir``."""

    def __init__(
        self,
        port: int = 9092,
        state_dir: Path | None = None,
        heap_mb: int = 768,
        jvm_options: Sequence[str] | None = None,
        server_props: Mapping[str, str] | None = None,
    ) -> None:
        """``jvm_options``: the JVM's GC and compiler flags (the heap is ``heap_mb``);
        default $RDV_KAFKA_JVM_OPTS (space-separated) or JVM_OPTIONS. ``server_props``:
        broker properties over this module's defaults."""
        self.port = port
        self.controller_port = port + 1
        self.state_dir = state_dir or PROJECT_ROOT / ".rdv" / f"kafka-{port}"
        self.heap_mb = heap_mb
        env_options = os.environ.get("RDV_KAFKA_JVM_OPTS", "").split()
        self.jvm_options = list(jvm_options or env_options or JVM_OPTIONS)
        self.server_props = dict(server_props or {})  # over the defaults (benches try others)
        self._proc: subprocess.Popen[bytes] | None = None  # set when started by this object

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "broker.log"

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "broker.pid"

    def pid(self) -> int | None:
        """The pid of this broker if it is running (stale pid files are ignored)."""
        try:
            pid = int(self._pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return (
            pid if b"kafka.Kafka" in cmdline and str(self.state_dir).encode() in cmdline else None
        )

    def status(self) -> BrokerStatus:
        return BrokerStatus(
            self.pid() is not None, self.pid(), self.bootstrap, self.state_dir, jars_cached()
        )

    def start(self, timeout_s: float = 90.0) -> float:
        """Start (or find running) and wait until it answers metadata; returns seconds."""
        began = time.monotonic()
        if self.pid() is not None:
            wait_for_broker(self.bootstrap, timeout_s)
            return time.monotonic() - began
        for port in (self.port, self.controller_port):
            if _port_in_use(port):
                raise BrokerSetupError(
                    f"port {port} on 127.0.0.1 is taken by another program; "
                    "choose another with --port (or RDV_KAFKA_PORT)"
                )
        java = _java()
        lib = fetch_jars()
        data_dir = self.state_dir / "data"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        props = self.state_dir / "server.properties"
        props.write_text(
            _server_properties(self.port, self.controller_port, data_dir, self.server_props)
        )
        classpath = f"{lib}/*"
        if not (data_dir / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    f"-Dlog4j2.configurationFile={LOG_CONFIG}",
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    _cluster_id(),
                    "-c",
                    str(props),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerSetupError(
                    f"formatting broker storage failed:\n{fmt.stdout}{fmt.stderr}"
                )
        cmd = [
            java,
            f"-Xms{self.heap_mb // 2}m",
            f"-Xmx{self.heap_mb}m",
            *self.jvm_options,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG_CONFIG}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._proc = proc
        self._pid_file.write_text(str(proc.pid))
        self._wait_ready(proc, began + timeout_s)
        return time.monotonic() - began

    def _wait_ready(self, proc: subprocess.Popen[bytes], until: float) -> None:
        while True:
            if proc.poll() is not None:
                raise BrokerSetupError(
                    f"the broker exited with code {proc.returncode} during start-up; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}"
                )
            try:
                wait_for_broker(self.bootstrap, timeout_s=min(2.0, until - time.monotonic()))
                return
            except KafkaUnavailableError:
                if time.monotonic() >= until:
                    self.stop()
                    raise BrokerSetupError(
                        f"the broker did not answer on {self.bootstrap} in time; last lines "
                        f"of {self.log_file}:\n{self._log_tail()}"
                    ) from None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop it cleanly (SIGTERM, then SIGKILL after timeout_s); False if not running."""
        pid = self.pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        if self._proc is not None and self._proc.pid == pid:  # our child: wait and reap it
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        else:
            until = time.monotonic() + timeout_s
            while self.pid() is not None:
                if time.monotonic() >= until:
                    os.kill(pid, signal.SIGKILL)
                    until = float("inf")
                time.sleep(0.1)  # not our child: nothing to wait on but /proc
        self._proc = None
        self._pid_file.unlink(missing_ok=True)
        return True

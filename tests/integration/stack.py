"""The data plane as real processes for one test: the gateway, the rendezvous and model
workers, each started with ``python -m services.<name>`` on the session's broker under
the test's topic prefix, on free ports, with the test's own policy files, waited for on
their readiness URLs, and stopped with SIGTERM at teardown (every one must exit, cleanly).

Import the fixture explicitly in a test module (it is not in conftest.py)::

    from tests.integration.stack import Launch, Worker, launch_stack_fixture  # noqa: F401

    def test_x(launch_stack: Launch) -> None:
        stack = launch_stack(policies=[{...}], workers=[Worker("champ", "echo:name=champ,...")])
        stack.http.post("/v1/infer/x", json={"inputs": 1})
        stack.kill("champ")      # SIGKILL, reaped at once
        stack.restart("champ")   # the same command and ports, waited for until ready
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import KafkaSettings
from services.common.topics import Topics

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gateway"
RENDEZVOUS = "rendezvous"
START_TIMEOUT_S = 240.0  # interpreters importing at once on 2 cores; a chat worker's first start
# in a fresh clone also converts the GGUF weights (about 20 s quiet, minutes on a busy box)
STOP_TIMEOUT_S = 20.0
POLL_S = 0.05  # how often readiness is probed: another process's state has no event


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    """Poll ``check`` until it holds; fail with ``what()`` after ``timeout_s``."""
    until = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > until:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what()}")
        time.sleep(POLL_S)


@dataclass(frozen=True)
class Worker:
    """One worker process: ``name`` names the process (unique in the stack, e.g.
    ``champ-1`` for a replica), ``spec`` is its ``--model`` argument."""

    name: str
    spec: str


def model_spec(
    name: str, runtime: str, role: str, endpoints: Iterable[str], **params: object
) -> str:
    """An inline worker spec: ``runtime:name=..,role=..,endpoints=a+b,key=value,...``."""
    parts = [f"name={name}", f"role={role}", f"endpoints={'+'.join(endpoints)}"]
    parts += [f"{k}={v}" for k, v in params.items()]
    return f"{runtime}:{','.join(parts)}"


@dataclass
class Proc:
    """One service process: how to start it, where it answers, its log."""

    name: str
    argv: list[str]
    env: dict[str, str]
    url: str  # base URL of its HTTP server (the gateway's, or the ops server's)
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    killed: bool = False  # by the test, with no restart since

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.killed = False

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def probe(self, path: str) -> bool:
        try:
            return httpx.get(f"{self.url}{path}", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        return self.alive and self.probe("/readyz")

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit status (-9)."""
        assert self.popen is not None, f"{self.name} was never started"
        assert self.alive, f"{self.name} is not running"
        self.popen.send_signal(signal.SIGKILL)
        self.killed = True
        return self.popen.wait(10)

    def wait_stopped(self) -> str | None:
        """After SIGTERM: wait for the exit; None if clean, else what went wrong."""
        assert self.popen is not None
        try:
            code = self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            return self.problem(f"did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
        # uvicorn (the gateway) re-raises SIGTERM after its graceful stop
        if code not in (0, -signal.SIGTERM):
            return self.problem(f"exited with {code} after SIGTERM")
        return None

    def problem(self, what: str) -> str:
        return f"{self.name} {what}; last lines of {self.log}:\n{self.tail()}"

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return "\n".join(text)


@dataclass
class Stack:
    """The started processes of one test, and a client for the gateway."""

    kafka: KafkaSettings
    topics: Topics
    procs: dict[str, Proc]
    reply_partition: int
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.procs[GATEWAY].url, timeout=30.0)

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return self.procs[GATEWAY].url

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        for proc in self.procs.values():
            proc.spawn()
        self.wait_ready(timeout_s=timeout_s)

    def not_ready(self, names: Iterable[str] | None = None) -> list[str]:
        """The processes (all by default) not running or not ready right now."""
        return [n for n in (names or self.procs) if not self.procs[n].ready()]

    def wait_ready(self, names: Iterable[str] | None = None, timeout_s: float = 60.0) -> None:
        """Wait until every named process (all by default) is ready at the same time."""
        wanted = list(names or self.procs)

        def check() -> bool:
            dead = [n for n in wanted if not self.procs[n].alive]
            if dead:
                raise AssertionError(self.report(dead, "exited while starting"))
            return not self.not_ready(wanted)

        wait_for(check, timeout_s, lambda: self.report(self.not_ready(wanted), "not ready"))

    def kill(self, name: str) -> None:
        """SIGKILL one process (it stays down until ``restart``)."""
        code = self.procs[name].kill()
        assert code == -signal.SIGKILL, f"{name} exited with {code} before the kill"

    def terminate(self, name: str) -> None:
        """SIGTERM one process and wait for its clean exit (it stays down until
        ``restart``)."""
        proc = self.procs[name]
        assert proc.popen is not None, f"{name} was never started"
        assert proc.alive, f"{name} is not running"
        proc.popen.send_signal(signal.SIGTERM)
        proc.killed = True
        problem = proc.wait_stopped()
        assert problem is None, problem

    def restart(self, name: str, timeout_s: float = 60.0) -> None:
        """Start a process that was killed again, with the same command and ports."""
        proc = self.procs[name]
        assert not proc.alive, f"{name} is still running"
        proc.spawn()
        self.wait_ready([name], timeout_s)

    def metrics(self, name: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of a process's /metrics: (sample name, labels) -> value."""
        text = httpx.get(f"{self.procs[name].url}/metrics", timeout=5.0).text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def metric(self, name: str, sample: str, **labels: str) -> float:
        """One sample of a process's /metrics (0 when it was never set)."""
        return self.metrics(name).get((sample, frozenset(labels.items())), 0.0)

    def report(self, names: Iterable[str], problem: str) -> str:
        return "\n".join(self.procs[n].problem(problem) for n in names)

    def stop(self) -> list[str]:
        """SIGTERM every running process at once and wait for each; the problems found
        (a process that died by itself during the test is one)."""
        self.http.close()
        started = [p for p in self.procs.values() if p.popen is not None and not p.killed]
        problems = [
            p.problem(f"died during the test (exit {p.popen.returncode})")
            for p in started
            if p.popen is not None and p.popen.poll() is not None
        ]
        running = [p for p in started if p.alive]
        for proc in running:
            assert proc.popen is not None
            proc.popen.send_signal(signal.SIGTERM)
        problems += [p for proc in running if (p := proc.wait_stopped()) is not None]
        return problems


def run_rdv(
    kafka: KafkaSettings, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``rdv <args>`` as a user runs it, on the test's broker; asserts it succeeded."""
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=REPO,
        env=service_env(kafka) | dict(env or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"rdv {' '.join(args)}: {proc.stderr}"
    return proc


class Launch(Protocol):
    """Start a stack: the gateway, the rendezvous and the given workers."""

    def __call__(
        self,
        *,
        policies: list[Mapping[str, Any]],
        workers: list[Worker],
        gateway_env: Mapping[str, str] | None = None,
    ) -> Stack: ...


def service_env(kafka: KafkaSettings) -> dict[str, str]:
    """The environment of a process on the test's broker and topics: settings of the
    developer's shell (ports, policies) must not leak into it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RDV_") or k.startswith("RDV_KAFKA_")
    }
    env.update(RDV_KAFKA_BOOTSTRAP=kafka.bootstrap, RDV_KAFKA_TOPIC_PREFIX=kafka.topic_prefix)
    return env


def build_stack(
    root: Path,
    kafka: KafkaSettings,
    topics: Topics,
    *,
    policies: list[Mapping[str, Any]],
    workers: list[Worker],
    gateway_env: Mapping[str, str] | None = None,
) -> Stack:
    """The processes of a stack under ``root`` (policies, logs), not started yet."""
    policy_dir = root / "policies"
    policy_dir.mkdir(parents=True)
    for doc in policies:
        (policy_dir / f"{doc['endpoint']}.yaml").write_text(yaml.safe_dump(dict(doc)))
    base = service_env(kafka)
    python = [sys.executable, "-m"]
    procs: dict[str, Proc] = {}

    def add(name: str, argv: list[str], env: Mapping[str, str], port: int) -> None:
        assert name not in procs, f"two processes named {name}"
        url = f"http://127.0.0.1:{port}"
        procs[name] = Proc(name, argv, {**base, **env}, url, root / f"{name}.log")

    port = free_port()
    add(
        GATEWAY,
        [*python, "services.gateway"],
        {
            "RDV_GATEWAY_PORT": str(port),
            "RDV_GATEWAY_POLICIES": str(policy_dir),
            # these tests count lost messages, not load shed: a busy test machine must
            # not turn answers into 503s (shedding has its own unit test)
            "RDV_GATEWAY_MAX_LOOP_LAG_MS": "2000",
        }
        | dict(gateway_env or {}),
        port,
    )
    port = free_port()
    add(
        RENDEZVOUS,
        [*python, "services.rendezvous"],
        {
            "RDV_RENDEZVOUS_POLICIES": str(policy_dir),
            "RDV_RENDEZVOUS_OPS_PORT": str(port),
            "RDV_RENDEZVOUS_AUTO_OFFSET_RESET": "earliest",
        },
        port,
    )
    for worker in workers:
        port = free_port()
        argv = [*python, "services.workers", "--model", worker.spec, "--ops-port", str(port)]
        add(worker.name, argv, {"RDV_WORKER_AUTO_OFFSET_RESET": "earliest"}, port)
    reply_partition = int(procs[GATEWAY].env.get("RDV_GATEWAY_REPLY_PARTITION", "0"))
    return Stack(kafka, topics, procs, reply_partition)


@pytest.fixture(name="launch_stack")
def launch_stack_fixture(
    kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path
) -> Iterator[Launch]:
    """A function that starts a stack and waits until every process is ready; every
    stack it started is stopped at teardown, which fails unless each process exits
    cleanly on SIGTERM (a process that died during the test fails it too)."""
    stacks: list[Stack] = []

    def launch(
        *,
        policies: list[Mapping[str, Any]],
        workers: list[Worker],
        gateway_env: Mapping[str, str] | None = None,
    ) -> Stack:
        root = tmp_path / f"stack-{len(stacks)}"
        stack = build_stack(
            root,
            kafka_settings,
            topics,
            policies=policies,
            workers=workers,
            gateway_env=gateway_env,
        )
        stacks.append(stack)
        stack.start()
        return stack

    try:
        yield launch
    finally:
        problems = [p for stack in stacks for p in stack.stop()]
    assert not problems, "\n\n".join(problems)

"""The chaos harness's stack: its own Kafka broker on a free port, a fresh topic prefix,
and the data plane as real processes on free ports (gateway, two rendezvous replicas in
one group, archive, the demo endpoint's champion and fallback workers), each polled for
exits so that any exit the harness did not cause is counted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.common.errors import ConfigError
from services.common.kafka import Admin, admin_config
from services.common.settings import KafkaSettings
from services.common.topics import Topics, load_topics
from services.devstack.broker import LocalBroker
from services.devstack.stack import load_stack

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "deploy" / "policies" / "demo.yaml"
ENDPOINT = "demo"
DEADLINE_MS = 1000  # demo.yaml's deadline_ms
START_TIMEOUT_S = 120.0
POLL_S = 0.1  # how often processes and readiness URLs are probed (other processes)


def _local_env() -> dict[str, dict[str, str]]:
    """Process name -> the env deploy/local/stack.yaml sets for it (empty if unreadable)."""
    try:
        return {spec.name: dict(spec.env) for spec in load_stack()}
    except ConfigError:
        return {}


LOCAL_ENV = _local_env()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Exit:
    """A process exit the harness did not cause."""

    service: str
    code: int
    at: float  # wall seconds
    last_line: str


@dataclass
class Service:
    """One process of the stack: how to start it, where it answers, and the exits the
    harness did not cause. With ``run_dir`` set, a supervisor (services.devstack.supervisor)
    owns the process: its pid and its exits are read from the supervisor's files."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    log: Path
    run_dir: Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    planned_down: bool = False  # own processes: down because the harness did it
    planned_exits: int = 0  # supervised processes: exits the harness caused, not yet seen
    seen_exits: int = 0
    exits: list[Exit] = field(default_factory=list)

    def spawn(self) -> None:
        if self.run_dir is not None:
            raise RuntimeError(f"{self.name} is supervised: the supervisor starts it")
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.planned_down = False

    @property
    def pid(self) -> int | None:
        if self.run_dir is None:
            return None if self.popen is None else self.popen.pid
        try:
            return int((self.run_dir / f"{self.name}.pid").read_text())
        except (OSError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        if self.run_dir is None:
            return self.popen is not None and self.popen.poll() is None
        pid = self.pid
        return pid is not None and _proc_state(pid) not in ("Z", "X")

    def ready(self) -> bool:
        if not self.alive:
            return False
        try:
            return httpx.get(self.ready_url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def check(self) -> list[Exit]:
        """The exits nobody planned since the last check."""
        if self.run_dir is not None:
            return self._check_supervised()
        if self.popen is None or self.planned_down:
            return []
        code = self.popen.poll()
        if code is None:
            return []
        died = Exit(self.name, code, time.time(), last_error_line(self.log))
        self.exits.append(died)
        self.planned_down = True  # counted; restarted between scenarios
        return [died]

    def _check_supervised(self) -> list[Exit]:
        """Exits counted from the supervisor's state file: each restart follows one
        exit, and a process waiting out its back-off has exited once more."""
        assert self.run_dir is not None
        try:
            state = json.loads((self.run_dir / f"{self.name}.state.json").read_text())
        except (OSError, ValueError):
            return []
        total = int(state.get("restarts") or 0) + (state.get("status") == "backoff")
        new, self.seen_exits = total - self.seen_exits, total
        planned = min(new, self.planned_exits)
        self.planned_exits -= planned
        found = []
        for _ in range(new - planned):
            reason = f"{state.get('last_exit')}: {state.get('last_reason') or ''}"[:240]
            at = float(state.get("last_exit_at") or time.time())
            died = Exit(self.name, int(state.get("last_exit_code") or 0), at, reason)
            found.append(died)
        self.exits.extend(found)
        return found

    def signal(self, sig: signal.Signals) -> None:
        pid = self.pid
        if pid is None or not self.alive:
            raise RuntimeError(f"{self.name} is not running")
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.planned_down = True
            self.planned_exits += 1
        os.kill(pid, sig)
        if sig is signal.SIGKILL and self.popen is not None:
            self.popen.wait(10)

    def terminate(self, timeout_s: float = 20.0) -> None:
        if self.popen is None or not self.alive:
            return
        self.planned_down = True
        self.popen.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        self.popen.terminate()
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def last_error_line(log: Path, limit: int = 240) -> str:
    """The last line of a log that looks like an error, else its last line."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    for line in reversed(lines):
        if any(w in line for w in ("Error", "error", "Exception", "failed", "Traceback")):
            return line[:limit]
    return lines[-1][:limit] if lines else ""


class ChaosStack:
    """Broker, topics and the data plane's processes; torn down on exit."""

    def __init__(self, *, supervised: bool = True, keep_dir: Path | None = None) -> None:
        """``supervised``: run the processes under services.devstack.supervisor, as ``rdv up``
        does (it restarts what exits); else the harness starts them itself and restarts
        only what it killed (and, between scenarios, what died)."""
        self._tmp = None if keep_dir else tempfile.TemporaryDirectory(prefix="rdv-chaos-")
        self.dir = keep_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker: LocalBroker | None = None
        self.services: dict[str, Service] = {}
        self.kafka = KafkaSettings()
        self.topics: Topics | None = None
        self.gateway_port = 0
        self.broker_exits: list[Exit] = []
        self.broker_planned_down = False
        self.base_env: dict[str, str] = {}
        self.run_dir = self.dir / "run" if supervised else None
        self.supervisor: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> ChaosStack:
        port = free_port()
        while _taken(port + 1):
            port = free_port()
        self.broker = LocalBroker(port=port, state_dir=self.dir / "kafka")
        self.broker.start()
        self.kafka = KafkaSettings(
            bootstrap=self.broker.bootstrap, topic_prefix=f"chaos{uuid.uuid4().hex[:8]}."
        )
        self.topics = load_topics(prefix=self.kafka.topic_prefix)
        self.topics.ensure(Admin(admin_config(self.kafka)))
        self._define()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.supervisor is not None:
            self.supervisor.send_signal(signal.SIGCONT)
            self.supervisor.terminate()  # it stops every process, all at once
            try:
                self.supervisor.wait(60)
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait(10)
        with ThreadPoolExecutor(len(self.services) or 1) as pool:
            list(pool.map(lambda s: s.terminate(), self.services.values()))
        if self.broker is not None:
            self.broker.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def _define(self) -> None:
        assert self.broker is not None
        env = {
            **os.environ,
            "RDV_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "RDV_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "RDV_RENDEZVOUS_POLICIES": str(POLICY),
            "RDV_GATEWAY_POLICIES": str(POLICY),
            "RDV_ARCHIVE_DIR": str(self.dir / "archive"),
        }
        self.base_env = env
        py = sys.executable
        self.gateway_port = free_port()
        for name in ("rendezvous-1", "rendezvous-2"):
            ops = free_port()
            self._add(
                name,
                [py, "-m", "services.rendezvous"],
                {**env, "RDV_RENDEZVOUS_OPS_PORT": str(ops), "RDV_RENDEZVOUS_INSTANCE_ID": name},
                f"http://127.0.0.1:{ops}/readyz",
            )
        ops = free_port()
        self._add(
            "archive",
            [py, "-m", "services.archive"],
            {**env, "RDV_ARCHIVE_OPS_PORT": str(ops)},
            f"http://127.0.0.1:{ops}/readyz",
        )
        for model in ("fast", "slow"):
            ops = free_port()
            spec = str(REPO / "models" / "specs" / f"{model}.yaml")
            self._add(
                f"worker-{model}",
                [py, "-m", "services.workers", "--model", spec, "--ops-port", str(ops)],
                env,
                f"http://127.0.0.1:{ops}/readyz",
            )
        self._add(
            "gateway",
            [py, "-m", "services.gateway"],
            {**env, "RDV_GATEWAY_PORT": str(self.gateway_port)},
            f"http://127.0.0.1:{self.gateway_port}/readyz",
        )

    def _add(self, name: str, argv: list[str], env: dict[str, str], ready: str) -> None:
        """Add a process; the settings deploy/local/stack.yaml gives the process of the
        same name apply too (where the harness sets none: its ports, broker, topics,
        policy and directories stay its own), so it runs what ``rdv up`` runs."""
        local = LOCAL_ENV.get(name.removeprefix("worker-"), {})
        env = {**{k: v for k, v in local.items() if not k.endswith("_PORT")}, **env}
        log = (self.run_dir or self.dir) / f"{name}.log"
        self.services[name] = Service(name, argv, env, ready, log, self.run_dir)

    def start_all(self) -> float:
        """Spawn every process at once and wait until all are ready; returns seconds."""
        began = time.monotonic()
        if self.run_dir is not None:
            self._start_supervisor(self.run_dir)
        else:
            for svc in self.services.values():
                svc.spawn()
        for svc in self.services.values():
            self.wait_ready(svc.name, START_TIMEOUT_S * 2)
        return time.monotonic() - began

    def _start_supervisor(self, run_dir: Path) -> None:
        """A stack file of these processes, run by services.devstack.supervisor in the
        background (the rendezvous first, the gateway last, as deploy/local/stack.yaml)."""
        base = self.base_env
        specs = [
            {
                "name": svc.name,
                "command": ["python", *svc.argv[1:]],
                "env": {k: v for k, v in svc.env.items() if base.get(k) != v},
                "ready": svc.ready_url,
            }
            for svc in self.services.values()
        ]
        run_dir.mkdir(parents=True, exist_ok=True)
        stack_file = self.dir / "stack.yaml"
        stack_file.write_text(json.dumps({"processes": specs}))  # JSON is YAML
        with (self.dir / "supervisor.out").open("ab") as out:
            self.supervisor = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.devstack.supervisor",
                    "--stack",
                    str(stack_file),
                    "--run-dir",
                    str(run_dir),
                ],
                cwd=REPO,
                env=base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pause_supervisor(self) -> None:
        """Hold restarts (SIGSTOP the supervisor): for a process kept down on purpose."""
        if self.supervisor is not None:
            self.supervisor.send_signal(signal.SIGSTOP)

    def resume_supervisor(self) -> None:
        if self.supervisor is not None:
            self.supervisor.send_signal(signal.SIGCONT)

    # -- faults ------------------------------------------------------------------

    def kill(self, name: str) -> None:
        self.services[name].signal(signal.SIGKILL)

    def pause(self, name: str) -> None:
        self.services[name].signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.services[name].signal(signal.SIGCONT)

    def restart(self, name: str) -> float:
        """Bring a killed process back (its supervisor does, when supervised) and wait
        until it is ready; returns seconds."""
        svc = self.services[name]
        began = time.monotonic()
        if svc.run_dir is None:
            if svc.alive:
                raise RuntimeError(f"{name} is still running")
            svc.spawn()
        self.wait_ready(name)
        return time.monotonic() - began

    def wait_ready(self, name: str, timeout_s: float = START_TIMEOUT_S) -> None:
        svc = self.services[name]
        until = time.monotonic() + timeout_s
        while not svc.ready():
            if not svc.alive and svc.run_dir is None:
                raise RuntimeError(f"{name} exited during start-up: {last_error_line(svc.log)}")
            if time.monotonic() > until:
                raise RuntimeError(f"{name} not ready within {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def kill_broker(self) -> None:
        assert self.broker is not None
        pid = self.broker.pid()
        if pid is None:
            raise RuntimeError("the broker is not running")
        self.broker_planned_down = True
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # our child: reap it
            os.waitpid(pid, 0)

    def start_broker(self) -> float:
        """Restart the killed broker on its port and state; returns seconds to ready."""
        assert self.broker is not None
        took = self.broker.start(timeout_s=180.0)
        self.broker_planned_down = False
        return took

    def metric(self, name: str, metric: str) -> float | None:
        """The sum of a counter's samples on a process's /metrics (None if unreadable)."""
        url = self.services[name].ready_url.rsplit("/", 1)[0] + "/metrics"
        try:
            text = httpx.get(url, timeout=2.0).text
        except httpx.HTTPError:
            return None
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == metric
        )

    # -- watching ----------------------------------------------------------------

    def check(self) -> list[Exit]:
        """Exits nobody planned since the last check (the broker included)."""
        found = [e for svc in self.services.values() for e in svc.check()]
        if self.broker is not None and not self.broker_planned_down and self.broker.pid() is None:
            died = Exit("broker", -1, time.time(), last_error_line(self.broker.log_file))
            self.broker_exits.append(died)
            self.broker_planned_down = True
            found.append(died)
        return found

    def wait(self, seconds: float, on_exit: Callable[[Exit], None] | None = None) -> None:
        """Let ``seconds`` pass, polling every process for exits meanwhile."""
        until = time.monotonic() + seconds
        while True:
            for died in self.check():
                if on_exit is not None:
                    on_exit(died)
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(POLL_S, left))  # the fault schedule's own clock

    def heal(self) -> list[str]:
        """Between scenarios: restart what is down (the broker first); returns names."""
        healed = []
        if self.broker is not None and self.broker.pid() is None:
            self.start_broker()
            healed.append("broker")
        self.resume_supervisor()
        for svc in self.services.values():
            if svc.alive and svc.pid is not None:
                os.kill(svc.pid, signal.SIGCONT)
            if not svc.alive:
                if svc.run_dir is None:
                    svc.spawn()
                healed.append(svc.name)
        for svc in self.services.values():
            if not svc.ready():
                self.wait_ready(svc.name)
        return healed

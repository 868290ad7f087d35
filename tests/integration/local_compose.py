"""The compose file's services as local processes, for test_compose.py: what each
runs (its command, the image's and its own environment, its port, its volumes), the
order compose starts them in, and ``LocalCompose``, which starts them that way here:
/app -> a folder of links to the repository per service (as the Dockerfile's COPY lines
lay it out), named volumes -> shared folders, kafka -> the test broker, ports -> free."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.common.settings import KafkaSettings
from tests.integration.clinc import CLINC150, OOD_CACHE
from tests.integration.deploy_files import (
    APP,
    REPO,
    argv_of,
    compose_services,
    dockerfile_stages,
    flag,
    image_stage,
)
from tests.integration.stack import free_port

SERVICES = compose_services()
OURS = {name: svc for name, svc in SERVICES.items() if image_stage(svc) is not None}
JOBS = {name for name, svc in OURS.items() if svc.get("restart") == "no"}
LONG_RUNNING = set(OURS) - JOBS
PORT_KEYS = (
    "RDV_GATEWAY_PORT",
    "RDV_RENDEZVOUS_OPS_PORT",
    "RDV_ARCHIVE_OPS_PORT",
    "RDV_COMPARE_OPS_PORT",
)


def service_argv(name: str) -> list[str]:
    svc = OURS[name]
    command = svc.get("command") or dockerfile_stages()[image_stage(svc) or ""].cmd
    return argv_of(command)


IMAGE_INSTALL_ENV = frozenset({"PATH", "UV_PROJECT_ENVIRONMENT"})
"""The image's ENV that says where its packages are installed."""


def service_env(name: str) -> dict[str, str]:
    """The container's environment: the image's ENV, then the service's."""
    svc = OURS[name]
    env = dict(dockerfile_stages()[image_stage(svc) or ""].env)
    env.update({k: "" if v is None else str(v) for k, v in svc.get("environment", {}).items()})
    return env


def listen_port(name: str) -> int:
    """The port the service's HTTP server is configured to listen on."""
    argv, env = service_argv(name), service_env(name)
    ports = [int(env[k]) for k in PORT_KEYS if k in env]
    if (ops := flag(argv, "--ops-port")) is not None:
        ports.append(int(ops))
    assert len(ports) == 1, f"{name}: one configured port expected, found {ports}"
    return ports[0]


def volume_mounts(name: str) -> list[tuple[str, str]]:
    """(source, container path) of the service's volumes; a source is a named volume
    or a host path (``${VAR:-default}`` resolved to its default)."""
    mounts = []
    for entry in OURS[name].get("volumes", []):
        resolved = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(entry))
        source, target = resolved.split(":")[:2]
        mounts.append((source, target))
    return mounts


def is_worker(name: str) -> bool:
    return "services.workers" in service_argv(name)


def ancestors(name: str) -> set[str]:
    """Every service ``name`` waits for, directly or not."""
    found: set[str] = set()
    todo = list(SERVICES[name].get("depends_on") or {})
    while todo:
        dep = todo.pop()
        if dep not in found:
            found.add(dep)
            todo.extend(SERVICES[dep].get("depends_on") or {})
    return found


def start_order() -> list[str]:
    """Services in an order compose could start them (fails on a cycle)."""
    done: list[str] = []
    pending = dict.fromkeys(SERVICES)
    while pending:
        ready = [n for n in pending if set(SERVICES[n].get("depends_on") or {}) <= set(done)]
        assert ready, f"a depends_on cycle among {sorted(pending)}"
        done.extend(ready)
        for n in ready:
            del pending[n]
    return done


@dataclass
class Launched:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str | None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])

    def ready(self) -> bool:
        assert self.popen.poll() is None, f"{self.name} exited:\n{self.tail()}"
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


class LocalCompose:
    """Runs compose services as local processes: /app -> a folder of links to the
    repository per service (as the Dockerfile's COPY lines lay it out), named volumes
    -> shared folders (``model-cache`` -> the folder above the OOD embedding cache,
    the repository's .rdv/cache by default, so embeddings are reused), kafka -> the
    test broker, ports -> free ones."""

    def __init__(self, root: Path, kafka: KafkaSettings) -> None:
        self.root, self.kafka = root, kafka
        self.ports = {n: free_port() for n in LONG_RUNNING}
        self.volumes = {"model-cache": OOD_CACHE.parent}  # .../cache/ood: warm embeddings
        self.started: dict[str, Launched] = {}

    def app_dir(self, name: str) -> tuple[Path, dict[str, Path]]:
        app = self.root / "apps" / name
        for src, dest in dockerfile_stages()[image_stage(OURS[name]) or ""].copies:
            link = app / os.path.relpath(dest, APP)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(REPO / src)
        paths = {APP: app}
        for source, target in volume_mounts(name):
            if "/" in source:
                host = CLINC150 if target == "/data/clinc150" else (REPO / source)
            else:
                host = self.volumes.setdefault(source, self.root / "volumes" / source)
                host.mkdir(parents=True, exist_ok=True)
            paths[target] = host
            if target.startswith(APP + "/"):
                link = app / os.path.relpath(target, APP)
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(host)
        return app, paths

    def local(self, name: str, text: str, paths: dict[str, Path]) -> str:
        """A command argument or env value with container paths and ports made local."""
        for prefix in sorted(paths, key=len, reverse=True):
            text = re.sub(rf"(?<![\w/.]){re.escape(prefix)}(?=/|\b|$)", str(paths[prefix]), text)
        text = re.sub(r"(?<![\w/.-])python(?= )", sys.executable, text)
        if name in self.ports and text == str(listen_port(name)):
            return str(self.ports[name])
        return "127.0.0.1" if text == "0.0.0.0" else text

    def start(self, name: str) -> Launched:
        app, paths = self.app_dir(name)
        argv = [self.local(name, a, paths) for a in service_argv(name)]
        if argv[0] == "python":
            argv[0] = sys.executable
        env = {k: v for k, v in os.environ.items() if not k.startswith("RDV_")}
        env |= {
            k: self.local(name, v, paths)
            for k, v in service_env(name).items()
            if k not in IMAGE_INSTALL_ENV  # here the test's own virtual env runs the command
        }
        if "RDV_KAFKA_BOOTSTRAP" in env:  # the compose file's kafka is the test broker
            env |= {
                "RDV_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
                "RDV_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            }
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{self.ports[name]}" if name in self.ports else None
        self.started[name] = Launched(name, popen, log, url)
        return self.started[name]

    def satisfied(self, name: str) -> bool:
        for dep, cond in (SERVICES[name].get("depends_on") or {}).items():
            if dep not in OURS:  # kafka: the test broker is up
                continue
            launched = self.started.get(dep)
            if launched is None:
                return False
            if cond["condition"] == "service_completed_successfully":
                code = launched.popen.poll()
                assert code in (None, 0), f"{dep} failed ({code}):\n{launched.tail()}"
                if code is None:
                    return False
            elif not launched.ready():
                return False
        return True

    def up(self, timeout_s: float) -> None:
        """Start every service once its dependencies are met; until all are ready."""
        waiting = [n for n in start_order() if n in OURS]

        until = time.monotonic() + timeout_s
        while True:
            for name in [n for n in waiting if self.satisfied(n)]:
                waiting.remove(name)
                self.start(name)
            if not waiting and not self.not_ready():
                return
            assert time.monotonic() < until, (
                f"not within {timeout_s:.0f} s: still waiting for {waiting or self.not_ready()}"
            )
            time.sleep(0.5)  # another process's state has no event to wait on

    def not_ready(self) -> list[str]:
        return [n for n in LONG_RUNNING if not self.started[n].ready()]

    def down(self) -> list[str]:
        """SIGTERM every running process; the ones that did not exit cleanly."""
        problems = []
        running = [p for p in self.started.values() if p.popen.poll() is None]
        for launched in running:
            launched.popen.send_signal(signal.SIGTERM)
        for launched in running:
            try:
                code = launched.popen.wait(30)
            except subprocess.TimeoutExpired:
                launched.popen.kill()
                launched.popen.wait(10)
                code = None
            if code not in (0, -signal.SIGTERM):  # uvicorn re-raises SIGTERM
                problems.append(f"{launched.name} exited with {code}:\n{launched.tail()}")
        return problems

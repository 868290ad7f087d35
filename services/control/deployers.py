"""Deployers start and stop a model's worker.

- ``process`` (the default, used by ``make up`` and the tests): a local process
  ``python -m services.workers --model <spec>`` with its pid and log in ``.rdv/run``
  (the same bookkeeping as ``rdv up``), waited for on its readiness URL.
- ``docker``: a container beside the shipped compose stack (``docker compose up``):
  compose's model image (rendezvous/model:dev), its network (<project>_default), its
  broker's in-network address (kafka:9092) and model-cache volume, and only the
  environment the worker reads; started with the docker SDK and waited for until its
  health check (the worker's /readyz) passes. The effective spec is mounted read-only.
  RDV_DOCKER_IMAGE, RDV_DOCKER_NETWORK, RDV_DOCKER_KAFKA_BOOTSTRAP,
  RDV_DOCKER_READY_TIMEOUT_S and COMPOSE_PROJECT_NAME change the defaults.

A deployed model's effective spec (its file, with the role the deploy asked for) is
written to ``.rdv/run/specs/<name>.yaml``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from services.common.errors import ConfigError
from services.common.spec import ModelSpec
from services.control.errors import DeployError
from services.devstack import stack

SPECS_DIR = stack.RUN_DIR / "specs"

# The shipped compose stack (docker-compose.yml): its project name (the file's `name:`),
# the image it builds for model workers, and its broker's in-network listener.
COMPOSE_PROJECT = "rendezvous"
MODEL_IMAGE = "rendezvous/model:dev"
COMPOSE_KAFKA = "kafka:9092"
WORKER_COMMAND = ("python", "-m", "services.workers")
WORKER_OPS_PORT = 9300
SPEC_IN_CONTAINER = "/etc/rdv/spec.yaml"
_S = 1_000_000_000  # the engine counts health check times in nanoseconds
HEALTHCHECK = {
    "test": [
        "CMD",
        "python",
        "-c",
        "import urllib.request as u; "
        f"u.urlopen('http://127.0.0.1:{WORKER_OPS_PORT}/readyz', timeout=2)",
    ],
    "interval": 2 * _S,
    "timeout": 3 * _S,
    "retries": 3,
    "start_period": 120 * _S,
}


@dataclass(frozen=True)
class Deployed:
    name: str
    where: str  # "pid 1234, ops :9401" or "container rdv-chall"


class Deployer(Protocol):
    def start(self, spec: ModelSpec, env: dict[str, str]) -> Deployed: ...

    def stop(self, name: str) -> bool: ...


def effective_spec(spec: ModelSpec, specs_dir: Path = SPECS_DIR) -> Path:
    """Write the spec as deployed (role included) and return its path."""
    specs_dir.mkdir(parents=True, exist_ok=True)
    path = specs_dir / f"{spec.name}.yaml"
    data = spec.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process(name: str, run_dir: Path, port: int = 0) -> stack.ProcessSpec:
    """The worker's process; its last argument, the effective spec's path, is what
    identifies the running process for ``stop`` (with the pid file)."""
    spec_path = run_dir / "specs" / f"{name}.yaml"
    return stack.ProcessSpec(
        name=f"model-{name}",
        command=[
            "python",
            "-m",
            "services.workers",
            "--ops-port",
            str(port),
            "--model",
            str(spec_path),
        ],
        ready=f"http://127.0.0.1:{port}/readyz",
    )


class ProcessDeployer:
    """Workers as local processes (``.rdv/run/model-<name>.pid`` and ``.log``)."""

    def __init__(self, run_dir: Path = stack.RUN_DIR) -> None:
        self.run_dir = run_dir

    def start(self, spec: ModelSpec, env: dict[str, str]) -> Deployed:
        port = _free_port()
        effective_spec(spec, self.run_dir / "specs")
        proc = _process(spec.name, self.run_dir, port)
        pid, took = stack.start(proc, env, self.run_dir)
        return Deployed(spec.name, f"pid {pid}, ops :{port}, ready in {took:.1f} s")

    def stop(self, name: str) -> bool:
        return stack.stop(_process(name, self.run_dir), self.run_dir)


@dataclass(frozen=True)
class DockerConfig:
    """Where the docker deployer runs a worker: by default beside the shipped compose
    stack (docker-compose.yml), checked against that file by tests/unit/control/test_control.py."""

    project: str = COMPOSE_PROJECT
    """The compose project: its network is ``<project>_default``, its volumes
    ``<project>_<volume>``."""
    image: str = MODEL_IMAGE
    network: str = f"{COMPOSE_PROJECT}_default"
    kafka_bootstrap: str = COMPOSE_KAFKA
    """The broker as containers on the network reach it (not the host's address)."""
    topic_prefix: str = ""
    ready_timeout_s: float = 300.0
    """How long a new worker may take to answer /readyz (a chat model's first start
    converts its weights)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DockerConfig:
        """The defaults, then COMPOSE_PROJECT_NAME (as compose reads it) and the
        deployer's own RDV_DOCKER_* overrides; the topic prefix is the CLI's."""
        project = env.get("COMPOSE_PROJECT_NAME") or COMPOSE_PROJECT
        try:
            timeout = float(env.get("RDV_DOCKER_READY_TIMEOUT_S", cls.ready_timeout_s))
        except ValueError:
            raise ConfigError("RDV_DOCKER_READY_TIMEOUT_S must be a number of seconds") from None
        return cls(
            project=project,
            image=env.get("RDV_DOCKER_IMAGE") or MODEL_IMAGE,
            network=env.get("RDV_DOCKER_NETWORK") or f"{project}_default",
            kafka_bootstrap=env.get("RDV_DOCKER_KAFKA_BOOTSTRAP") or COMPOSE_KAFKA,
            topic_prefix=env.get("RDV_KAFKA_TOPIC_PREFIX", ""),
            ready_timeout_s=timeout,
        )


def container_env(config: DockerConfig, env: Mapping[str, str]) -> dict[str, str]:
    """Only what the worker reads: the in-network broker, the topic prefix, where its
    ops server listens, and the log level if one is set here; no other host setting
    (a host's Kafka address or credentials mean nothing inside the network)."""
    out = {
        "RDV_KAFKA_BOOTSTRAP": config.kafka_bootstrap,
        "RDV_KAFKA_TOPIC_PREFIX": config.topic_prefix,
        "RDV_WORKER_OPS_HOST": "0.0.0.0",  # noqa: S104 - the container's own interface
        "RDV_WORKER_OPS_PORT": str(WORKER_OPS_PORT),
    }
    if env.get("RDV_WORKER_LOG_LEVEL"):
        out["RDV_WORKER_LOG_LEVEL"] = env["RDV_WORKER_LOG_LEVEL"]
    return out


class DockerDeployer:
    """Workers as containers (``rdv-<name>``) of ``config.image`` on ``config.network``,
    started once their health check (GET /readyz on the worker's ops port) passes."""

    def __init__(
        self,
        config: DockerConfig | None = None,
        client: Any = None,
        specs_dir: Path = SPECS_DIR,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is None:
            try:
                import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - only here
            except ImportError as exc:
                raise ConfigError("the docker deployer needs the docker package") from exc
            client = docker.from_env()
        self.client = client
        self.config = config or DockerConfig()
        self.specs_dir = specs_dir
        self.poll_s = poll_s
        self.clock = clock

    def start(self, spec: ModelSpec, env: dict[str, str]) -> Deployed:
        path = effective_spec(spec, self.specs_dir).resolve()
        project = self.config.project
        started = self.clock()
        try:
            container = self.client.containers.run(
                self.config.image,
                command=[*WORKER_COMMAND, "--model", SPEC_IN_CONTAINER],
                name=f"rdv-{spec.name}",
                network=self.config.network,
                environment=container_env(self.config, env),
                volumes={
                    str(path): {"bind": SPEC_IN_CONTAINER, "mode": "ro"},
                    f"{project}_model-cache": {"bind": "/app/.rdv/cache", "mode": "rw"},
                    f"{project}_ood-artifact": {"bind": "/app/.rdv/models", "mode": "ro"},
                },
                labels={"rdv.model": spec.name, "rdv.role": spec.role.value},
                healthcheck=HEALTHCHECK,
                restart_policy={"Name": "unless-stopped"},
                detach=True,
            )
        except Exception as exc:  # noqa: BLE001 - the SDK's errors, whatever the engine says
            raise DeployError(f"docker could not start rdv-{spec.name}: {exc}") from None
        self._wait_ready(container)
        took = self.clock() - started
        return Deployed(spec.name, f"container {container.name}, ready in {took:.1f} s")

    def stop(self, name: str) -> bool:
        found = self.client.containers.list(all=True, filters={"label": f"rdv.model={name}"})
        for container in found:
            container.stop(timeout=20)
            container.remove()
        return bool(found)

    def _wait_ready(self, container: Any) -> None:
        """Until the container's health check passes; a container that exits, turns
        unhealthy or is not healthy in time is removed and the error says why."""
        until = self.clock() + self.config.ready_timeout_s
        while True:
            container.reload()
            if container.health == "healthy":
                return
            if container.status in ("exited", "dead"):
                problem = f"stopped (status {container.status})"
                break
            if container.health == "unhealthy":
                problem = "failed its health check (/readyz)"
                break
            if self.clock() > until:
                problem = f"was not ready (/readyz) within {self.config.ready_timeout_s:.0f} s"
                break
            time.sleep(self.poll_s)  # polling the engine between checks
        logs = container.logs(tail=20).decode("utf-8", errors="replace").strip()
        container.remove(force=True)
        raise DeployError(
            f"container {container.name} {problem} and was removed; its last log lines:\n{logs}"
        )


def deployer(kind: str) -> Deployer:
    if kind == "process":
        return ProcessDeployer()
    if kind == "docker":
        return DockerDeployer(DockerConfig.from_env(os.environ))
    raise ConfigError(f"unknown deployer {kind!r}: process or docker")

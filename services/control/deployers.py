"""Deployers start and stop a model's worker.

- ``process`` (the default, used by ``make up`` and the tests): a local process
  ``python -m services.workers --model <spec>`` with its pid and log in ``.rdv/run``
  (the same bookkeeping as ``rdv up``), waited for on its readiness URL.
- ``docker``: a container of the worker image (deploy/docker) on the compose network,
  started and stopped with the docker SDK; the effective spec is mounted read-only.

A deployed model's effective spec (its file, with the role the deploy asked for) is
written to ``.rdv/run/specs/<name>.yaml``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from services.cli import stack
from services.common.errors import ConfigError
from services.workers.spec import ModelSpec

SPECS_DIR = stack.RUN_DIR / "specs"


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


class DockerDeployer:
    """Workers as containers (``rdv-<name>``) of ``image`` on ``network``."""

    def __init__(self, image: str, network: str, client: Any = None) -> None:
        if client is None:
            try:
                import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - only here
            except ImportError as exc:
                raise ConfigError("the docker deployer needs the docker package") from exc
            client = docker.from_env()
        self.client = client
        self.image = image
        self.network = network

    def start(self, spec: ModelSpec, env: dict[str, str]) -> Deployed:
        path = effective_spec(spec).resolve()
        container = self.client.containers.run(
            self.image,
            command=["python", "-m", "services.workers", "--model", "/etc/rdv/spec.yaml"],
            name=f"rdv-{spec.name}",
            network=self.network,
            environment={k: v for k, v in env.items() if k.startswith("RDV_")},
            volumes={str(path): {"bind": "/etc/rdv/spec.yaml", "mode": "ro"}},
            labels={"rdv.model": spec.name, "rdv.role": spec.role.value},
            detach=True,
        )
        return Deployed(spec.name, f"container {container.name}")

    def stop(self, name: str) -> bool:
        found = self.client.containers.list(all=True, filters={"label": f"rdv.model={name}"})
        for container in found:
            container.stop(timeout=20)
            container.remove()
        return bool(found)


def deployer(kind: str) -> Deployer:
    if kind == "process":
        return ProcessDeployer()
    if kind == "docker":
        image = os.environ.get("RDV_DOCKER_IMAGE", "rendezvous-worker:latest")
        return DockerDeployer(image, os.environ.get("RDV_DOCKER_NETWORK", "rendezvous"))
    raise ConfigError(f"unknown deployer {kind!r}: process or docker")

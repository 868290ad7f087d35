"""docker-compose.yml and deploy/docker/Dockerfile against the code, without a Docker
engine: every command is a real entry point, every file it names exists in the image,
health checks probe the ports the services listen on, the start-up graph is complete,
and the whole graph actually runs here: each service's command started as a process in
compose's dependency order (tests/integration/local_compose.py: the test broker for
``kafka``, the image's /app emulated by a folder of links to the repository, named
volumes by folders, ports by free ports), waited for on its /readyz, answering a request
through the gateway, then stopped with SIGTERM and expected to exit cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from services.common.settings import KafkaSettings
from tests.integration.clinc import CLINC150
from tests.integration.deploy_files import (
    APP,
    NO_KAFKA,
    REPO,
    check_real_command,
    compose,
    dockerfile_stages,
    flag,
    image_stage,
    python_commands,
    url_port,
)
from tests.integration.local_compose import (
    IMAGE_INSTALL_ENV,
    JOBS,
    LONG_RUNNING,
    OURS,
    SERVICES,
    LocalCompose,
    ancestors,
    is_worker,
    listen_port,
    service_argv,
    service_env,
    start_order,
    volume_mounts,
)

TORCH_FREE = "service"  # the Dockerfile stage without torch


def test_every_command_is_a_real_entry_point_with_arguments_it_accepts() -> None:
    modules = {}
    for name in OURS:
        invocations = python_commands(service_argv(name))
        assert invocations, f"{name} starts no `python -m` command"
        modules[name] = [check_real_command(argv) for argv in invocations]
    for stage in dockerfile_stages().values():
        assert stage.cmd is not None, f"stage {stage.name} has no CMD"
        check_real_command(stage.cmd)
    used = {m for ms in modules.values() for m in ms}
    assert used >= {
        "services.gateway",
        "services.rendezvous",
        "services.workers",
        "services.archive",
        "services.compare",
    }


def test_every_file_a_service_names_is_in_its_image() -> None:
    stages = dockerfile_stages()
    for name, svc in OURS.items():
        copied = {dest: src for src, dest in stages[image_stage(svc) or ""].copies}
        mounted = {target for _, target in volume_mounts(name)}
        argv = service_argv(name)
        env = {k: v for k, v in service_env(name).items() if k not in IMAGE_INSTALL_ENV}
        paths = [v for v in env.values() if v.startswith("/")]
        if (spec := flag(argv, "--model")) is not None:
            paths.append(f"{APP}/{spec}")
        for path in paths:
            if any(path.startswith(m) for m in mounted) or path == "0.0.0.0":
                continue
            owner = next((d for d in copied if path == d or path.startswith(d + "/")), None)
            assert owner, f"{name}: {path} is not copied into the image"
            assert (REPO / copied[owner] / os.path.relpath(path, owner)).exists(), path
    for source, target in [m for n in OURS for m in volume_mounts(n)]:
        if "/" in source:  # a bind mount of the repository or of the data
            assert (REPO / source).exists() or source.startswith(".."), source
            assert target.startswith("/"), target
    for svc in SERVICES.values():
        for entry in svc.get("volumes", []):
            if str(entry).startswith("./"):
                assert (REPO / str(entry).split(":")[0]).exists(), entry


def test_health_checks_probe_readyz_on_the_configured_port_on_every_interface() -> None:
    for name in LONG_RUNNING:
        check = OURS[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        port, path = url_port(" ".join(check["test"]))
        assert (port, path) == (listen_port(name), "/readyz"), name
        hosts = [v for k, v in service_env(name).items() if k.endswith("_HOST")]
        assert "0.0.0.0" in hosts, f"{name} would listen on loopback only"


def test_the_start_up_graph_is_complete_gated_on_health_and_acyclic() -> None:
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on a missing service {dep}"
            condition = cond["condition"]
            if condition == "service_healthy":
                assert SERVICES[dep].get("healthcheck"), f"{dep} has no healthcheck"
            else:
                assert condition == "service_completed_successfully", (name, dep)
                assert SERVICES[dep].get("restart") == "no", f"{dep} is not a one-shot job"
    order = start_order()
    assert set(order) == set(SERVICES)
    gateway_deps = set(SERVICES["gateway"]["depends_on"])
    assert gateway_deps >= {"rendezvous"} | {n for n in LONG_RUNNING if is_worker(n)}


def test_the_light_image_carries_no_torch_and_runs_only_torch_free_commands() -> None:
    stages = dockerfile_stages()
    assert not any("torch" in run or "models]" in run for run in stages[TORCH_FREE].runs)
    light = [n for n, svc in OURS.items() if image_stage(svc) == TORCH_FREE]
    specs = [flag(service_argv(n), "--model") for n in light if is_worker(n)]
    modules = {m for n in light for a in python_commands(service_argv(n)) for m in [a[2]]}
    code = (
        "import sys, importlib.util\n"
        f"for m in {sorted(modules)!r}: importlib.import_module(m + '.__main__' "
        "if importlib.util.find_spec(m).submodule_search_locations else m)\n"
        "from services.common.spec import load_spec\n"
        "from services.workers.runtime import create_runtime\n"
        f"for f in {specs!r}:\n"
        "    s = load_spec(f); create_runtime(s.runtime, s.params).load()\n"
        "print(sorted(k for k in ('torch', 'transformers') if k in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]"], f"the light image's commands load {out.stdout}"


def test_every_service_on_kafka_reaches_the_kafka_service_after_its_topics() -> None:
    kafka = SERVICES["kafka"]["environment"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for name in OURS:
        modules = {a[2] for a in python_commands(service_argv(name))}
        if modules & NO_KAFKA:  # reads files only: no Kafka settings at all
            assert not any(k.startswith("RDV_KAFKA_") for k in service_env(name)), name
            continue
        assert service_env(name).get("RDV_KAFKA_BOOTSTRAP") == "kafka:9092", name
        waits_for = ancestors(name) | {name}
        assert waits_for >= {"kafka", "topics"}, f"{name} may start before Kafka or its topics"


def test_prometheus_scrapes_every_service_on_its_port() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {f"{n}:{listen_port(n)}" for n in LONG_RUNNING}
    assert {"prometheus", "grafana"} <= set(SERVICES)


@pytest.fixture
def local_compose(tmp_path: Path, kafka_settings: KafkaSettings) -> Iterator[LocalCompose]:
    stack = LocalCompose(tmp_path, kafka_settings)
    try:
        yield stack
    finally:
        problems = stack.down()
    assert not problems, "\n\n".join(problems)


@pytest.mark.timeout(600)
def test_every_service_of_the_compose_file_starts_answers_and_stops_cleanly(
    local_compose: LocalCompose,
) -> None:
    assert (CLINC150 / "train.jsonl").is_file(), f"no CLINC150 at {CLINC150}"
    started = time.monotonic()
    local_compose.up(timeout_s=420)
    for job in JOBS:
        assert local_compose.started[job].popen.returncode == 0, job
    artifact = local_compose.volumes["ood-artifact"] / "ood-clinc150" / "artifact.json"
    assert artifact.is_file(), "the ood-fit job wrote no artifact"
    gateway = local_compose.started["gateway"].url
    answer = httpx.post(
        f"{gateway}/v1/infer/demo", json={"inputs": {"text": "hi"}, "deadline_ms": 5000}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == {"text": "hi"}
    print(f"\ncompose graph up and answering in {time.monotonic() - started:.0f} s")


def test_compose_declares_the_volumes_it_mounts() -> None:
    declared = set(compose().get("volumes", {}))
    named: set[str] = set()
    for svc in SERVICES.values():
        for entry in svc.get("volumes", []):
            source = str(entry).split(":")[0]
            if "/" not in source and "$" not in source:
                named.add(source)
    assert named == declared


def test_both_images_install_the_locked_package_set() -> None:
    stages = dockerfile_stages()
    for name in ("service", "model"):
        copied = {src for src, _ in stages[name].copies}
        assert {"uv.lock", "deploy/install-locked.sh"} <= copied, name
        installs = [run for run in stages[name].runs if "install-locked.sh" in run]
        assert installs, f"{name} does not install from uv.lock"
        assert not any("pip install -e" in run for run in stages[name].runs), name
    assert any("--extra models" in run for run in stages["model"].runs)

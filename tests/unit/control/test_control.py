"""The control plane's pure parts: folding the control topic, promote and retire
rewrites of policy documents, and the deployers' bookkeeping (docker with a fake SDK,
its defaults checked against docker-compose.yml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.control import require_admin_key
from services.cli.main import main
from services.common.codec import message_key
from services.common.errors import ConfigError
from services.common.messages import ModelRegistration, PolicyEntry, Role
from services.common.policy import parse_policy
from services.common.settings import KafkaSettings
from services.common.spec import load_spec
from services.control.deployers import DockerConfig, DockerDeployer, container_env, effective_spec
from services.control.errors import DeployError
from services.control.policies import champion_of, mentions, promote, retire
from services.control.state import ControlState, model_key, policy_key, policy_version_key
from services.rendezvous.live import merged
from services.workers.settings import WorkerSettings
from tests.factories import policy_doc

REPO = Path(__file__).resolve().parents[3]


def _reg(name: str, role: Role = Role.CHALLENGER) -> ModelRegistration:
    return ModelRegistration(
        name=name,
        version="1",
        role=role,
        endpoints=["demo"],
        runtime="echo",
        changed_by="t",
        changed_ms=1,
    )


def _entry(version: int, **over: Any) -> PolicyEntry:
    return PolicyEntry(
        endpoint="demo", version=version, policy=policy_doc(**over), changed_by="t", changed_ms=1
    )


def test_the_state_folds_models_policies_history_and_tombstones() -> None:
    state = ControlState()
    assert state.apply(model_key("a"), _reg("a")) == "model"
    assert state.apply(policy_key("demo"), _entry(1)) == "policy"
    assert state.apply(policy_version_key("demo", 1), _entry(1)) is None
    assert state.apply(policy_key("demo"), _entry(2, deadline_ms=900)) == "policy"
    assert state.policies["demo"].version == 2
    assert sorted(state.history["demo"]) == [1, 2]
    assert state.next_version("demo") == 3
    assert state.next_version("other") == 1
    state.apply(model_key("a"), None)
    state.apply(policy_key("demo"), None)
    assert state.models == {}
    assert state.policies == {}
    assert state.apply(b"unknown/x", None) is None


ONE_STAGE = policy_doc(
    models=["champ"], stages=[{"until_ms": "deadline", "accept": ["champ"]}], deadline_ms=1000
)


def test_promote_splits_a_single_stage_and_keeps_the_old_champion_as_fallback() -> None:
    doc = promote(ONE_STAGE, "chall")
    assert doc["models"] == ["champ", "chall"]
    assert doc["stages"] == [
        {"until_ms": 500, "accept": ["chall"]},
        {"until_ms": "deadline", "accept": ["chall", "champ"]},
    ]
    assert champion_of(doc) == "chall"
    assert ONE_STAGE["stages"][0]["accept"] == ["champ"]  # the input is left alone


def test_promote_on_a_staged_policy_and_twice_is_refused() -> None:
    doc = promote(policy_doc(), "slow")  # fast, then fast or slow, then any
    assert doc["stages"] == [
        {"until_ms": 300, "accept": ["slow"]},
        {"until_ms": 800, "accept": ["slow", "fast"]},
        {"until_ms": "deadline", "accept": "any"},
    ]
    with pytest.raises(ConfigError, match="already the champion"):
        promote(doc, "slow")


BANDIT = policy_doc(
    models=["fast", "slow", "flaky"],
    stages=[
        {"until_ms": 600, "accept": ["fast", "slow", "flaky"], "pick": "bandit"},
        {"until_ms": "deadline", "accept": "any"},
    ],
    bandit={"min_share": 0.05, "champion": "fast", "champion_floor": 0.1},
)


def test_promote_ends_a_bandit_and_retire_keeps_it_valid() -> None:
    won = promote(BANDIT, "slow")
    assert won["stages"][0] == {"until_ms": 600, "accept": ["slow"]}
    assert "bandit" not in won
    parse_policy(won, "promoted")
    fewer = retire(BANDIT, "fast")  # the bandit's champion: its floor goes with it
    assert fewer["stages"][0]["pick"] == "bandit"
    assert fewer["bandit"] == {"min_share": 0.05}
    alone = retire(fewer, "flaky")  # one arm left: the stage picks by preference
    assert alone["stages"][0] == {"until_ms": 600, "accept": ["slow"]}
    assert "bandit" not in alone


def test_retire_removes_the_model_and_empty_stages() -> None:
    doc = retire(promote(ONE_STAGE, "chall"), "champ")
    assert doc["models"] == ["chall"]
    assert doc["stages"] == [
        {"until_ms": 500, "accept": ["chall"]},
        {"until_ms": "deadline", "accept": ["chall"]},
    ]
    alone = retire(policy_doc(), "fast")  # its first stage had only fast
    assert alone["stages"][0] == {"until_ms": 800, "accept": ["slow"]}
    with pytest.raises(ConfigError, match="no model"):
        retire(ONE_STAGE, "champ")
    gated = policy_doc(
        models=["fast", "slow", "ood"],
        ood={"detector": "ood", "wait_ms": 100, "when_flagged": {"output": "no"}},
    )
    with pytest.raises(ConfigError, match="OOD gate"):
        retire(gated, "ood")
    assert mentions(gated, "ood")
    assert not mentions(gated, "fas")  # names, not substrings


def test_the_effective_spec_carries_the_deployed_role(tmp_path: Path) -> None:
    spec = load_spec("echo:name=chall,role=champion,endpoints=demo,latency_ms=3")
    spec = spec.model_copy(update={"role": Role.CHALLENGER})
    path = effective_spec(spec, tmp_path)
    data = yaml.safe_load(path.read_text())
    assert (data["name"], data["role"], data["params"]) == (
        "chall",
        "challenger",
        {"latency_ms": 3},
    )
    assert load_spec(str(path)).role is Role.CHALLENGER


class _Container:
    """A container whose health check passes after ``healthy_after`` reloads (None:
    never), or which exits at once (``exits``)."""

    def __init__(
        self, name: str, healthy_after: int | None = 0, exits: bool = False, sick: bool = False
    ) -> None:
        self.name = name
        self.healthy_after = healthy_after
        self.exits = exits
        self.sick = sick
        self.reloads = 0
        self.status = "created"
        self.health = "unknown"
        self.removed = False
        self.stopped = False

    def reload(self) -> None:
        self.reloads += 1
        self.status = "exited" if self.exits else "running"
        ready = self.healthy_after is not None and self.reloads > self.healthy_after
        self.health = "healthy" if ready and not self.exits else "starting"
        if self.sick and self.reloads > 2:
            self.health = "unhealthy"

    def logs(self, tail: int) -> bytes:
        return b"worker: cannot reach kafka:9092\n"

    def stop(self, timeout: int) -> None:
        self.stopped = True

    def remove(self, force: bool = False) -> None:
        self.removed = True


class _Containers:
    """The docker SDK's ``client.containers``, recording what it is asked."""

    def __init__(self, **behaviour: Any) -> None:
        self.behaviour = behaviour
        self.runs: list[dict[str, Any]] = []
        self.made: list[_Container] = []

    def run(self, image: str, **kw: Any) -> _Container:
        self.runs.append({"image": image, **kw})
        self.made.append(_Container(kw["name"], **self.behaviour))
        return self.made[-1]

    def list(self, all: bool, filters: dict[str, str]) -> list[_Container]:
        return [c for c in self.made if filters["label"] == f"rdv.model={c.name[4:]}"]


def _docker(
    tmp_path: Path, config: DockerConfig | None = None, **behaviour: Any
) -> tuple[DockerDeployer, _Containers]:
    containers = _Containers(**behaviour)
    client = type("Client", (), {"containers": containers})()
    ticks = iter(range(10_000))  # a clock that moves one second per look
    deployer = DockerDeployer(
        config, client=client, specs_dir=tmp_path / "specs", poll_s=0, clock=lambda: next(ticks)
    )
    return deployer, containers


def test_the_docker_deployer_runs_the_worker_with_only_what_it_needs(tmp_path: Path) -> None:
    docker, containers = _docker(tmp_path, healthy_after=3)
    assert docker.stop("chall") is False
    spec = load_spec("echo:name=chall,role=challenger,endpoints=demo")
    host_env = {
        "RDV_KAFKA_BOOTSTRAP": "localhost:19092",  # the host's address: not the container's
        "RDV_KAFKA_SASL_PASSWORD": "secret",
        "RDV_GATEWAY_API_KEYS": "ops:admin:0123456789abcdef",
        "RDV_WORKER_LOG_LEVEL": "DEBUG",
        "HOME": "/root",
    }
    started = docker.start(spec, host_env)
    [run] = containers.runs
    assert run["image"] == "rendezvous/model:dev"
    assert run["command"] == ["python", "-m", "services.workers", "--model", "/etc/rdv/spec.yaml"]
    assert run["network"] == "rendezvous_default"
    assert run["environment"] == {
        "RDV_KAFKA_BOOTSTRAP": "kafka:9092",
        "RDV_KAFKA_TOPIC_PREFIX": "",
        "RDV_WORKER_OPS_HOST": "0.0.0.0",
        "RDV_WORKER_OPS_PORT": "9300",
        "RDV_WORKER_LOG_LEVEL": "DEBUG",
    }
    spec_file = tmp_path / "specs" / "chall.yaml"  # not the repo's .rdv/run/specs
    assert run["volumes"][str(spec_file.resolve())] == {"bind": "/etc/rdv/spec.yaml", "mode": "ro"}
    assert "9300/readyz" in run["healthcheck"]["test"][-1]
    assert containers.made[0].reloads == 4  # waited until its health check passed
    assert started.where.startswith("container rdv-chall, ready in")
    assert docker.stop("chall") is True
    assert containers.made[0].stopped
    assert containers.made[0].removed


def test_a_worker_that_exits_or_never_gets_ready_is_a_clear_error(tmp_path: Path) -> None:
    spec = load_spec("echo:name=chall,role=challenger,endpoints=demo")
    exits, containers = _docker(tmp_path, exits=True)
    with pytest.raises(
        DeployError, match=r"(?s)rdv-chall stopped \(status exited\).*cannot reach kafka:9092"
    ):
        exits.start(spec, {})
    assert containers.made[0].removed  # a retry does not hit a name conflict
    slow, containers = _docker(tmp_path, DockerConfig(ready_timeout_s=30), healthy_after=None)
    with pytest.raises(DeployError, match=r"was not ready \(/readyz\) within 30 s"):
        slow.start(spec, {})
    assert 25 <= containers.made[0].reloads <= 32  # polled until the timeout, then gave up
    sick, containers = _docker(tmp_path, healthy_after=None, sick=True)
    with pytest.raises(DeployError, match=r"failed its health check \(/readyz\)"):
        sick.start(spec, {})
    assert (containers.made[0].reloads, containers.made[0].removed) == (3, True)


def test_the_docker_defaults_follow_the_environment(tmp_path: Path) -> None:
    config = DockerConfig.from_env({"COMPOSE_PROJECT_NAME": "rdv2", "RDV_KAFKA_TOPIC_PREFIX": "t."})
    assert (config.network, config.topic_prefix) == ("rdv2_default", "t.")
    docker, containers = _docker(tmp_path, config)
    docker.start(load_spec("echo:name=a,role=challenger,endpoints=demo"), {})
    volumes = containers.runs[0]["volumes"]
    assert volumes["rdv2_model-cache"] == {"bind": "/app/.rdv/cache", "mode": "rw"}
    custom = DockerConfig.from_env(
        {
            "RDV_DOCKER_NETWORK": "net",
            "RDV_DOCKER_IMAGE": "img:1",
            "RDV_DOCKER_KAFKA_BOOTSTRAP": "b:1",
        }
    )
    assert (custom.network, custom.image, custom.kafka_bootstrap) == ("net", "img:1", "b:1")
    with pytest.raises(ConfigError, match="RDV_DOCKER_READY_TIMEOUT_S"):
        DockerConfig.from_env({"RDV_DOCKER_READY_TIMEOUT_S": "soon"})


def test_the_docker_defaults_match_the_shipped_compose_stack(tmp_path: Path) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    config = DockerConfig()
    # the network compose creates: <project>_default, the project being the `name:` key
    assert config.network == f"{compose['name']}_default"
    # the image compose builds for model workers (the Dockerfile's `model` stage)
    model_images = {
        s["image"] for s in services.values() if s.get("build", {}).get("target") == "model"
    }
    assert model_images == {config.image}
    # the broker's listener for containers on the network, as compose's workers use it
    kafka = services["kafka"]["environment"]
    inner = kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert config.kafka_bootstrap == advertised[inner] == "kafka:9092"
    workers = {
        name: s
        for name, s in services.items()
        if "services.workers" in " ".join(s.get("command", []))
    }
    assert workers
    env = container_env(config, {})
    for name, svc in workers.items():
        assert svc["environment"]["RDV_KAFKA_BOOTSTRAP"] == config.kafka_bootstrap, name
        assert set(svc["environment"]) <= set(env), f"{name} gets settings the deployer does not"
        assert svc["environment"]["RDV_KAFKA_TOPIC_PREFIX"] == env["RDV_KAFKA_TOPIC_PREFIX"]
    # every variable the container gets is a setting the worker reads
    read = {f"RDV_KAFKA_{f.upper()}" for f in KafkaSettings.model_fields}
    read |= {f"RDV_WORKER_{f.upper()}" for f in WorkerSettings.model_fields}
    assert set(env) <= read
    # the volumes compose's model workers use, under compose's names for them
    docker, containers = _docker(tmp_path, healthy_after=0)
    docker.start(load_spec("echo:name=a,role=challenger,endpoints=demo"), {})
    mounted = {
        (name, v["bind"]) for name, v in containers.runs[0]["volumes"].items() if "_" in name
    }
    for svc in (services["smol"], services["ood"]):
        for volume in svc["volumes"]:
            name, target = volume.split(":")[:2]
            assert name in compose["volumes"]
            assert (f"{compose['name']}_{name}", target) in mounted


def test_control_changes_need_an_admin_key_when_keys_are_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "RDV_GATEWAY_API_KEYS", "ops:admin:admin-key-0123456789,app:client:client-key-0123456789"
    )
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached: refused first
    monkeypatch.setenv("RDV_API_KEY", "client-key-0123456789")
    assert main(["policy", "set", "demo", "deploy/policies/demo.yaml"]) == 2
    assert "need an admin key" in capsys.readouterr().err
    monkeypatch.delenv("RDV_API_KEY")
    assert main(["promote", "slow", "--endpoint", "demo"]) == 2
    assert "need an admin key" in capsys.readouterr().err
    monkeypatch.setenv("RDV_API_KEY", "admin-key-0123456789")
    require_admin_key()  # accepted
    monkeypatch.delenv("RDV_GATEWAY_API_KEYS")
    monkeypatch.delenv("RDV_API_KEY")
    require_admin_key()  # keys off: open


def test_control_policies_overlay_the_files_and_a_bad_entry_keeps_the_last_good() -> None:
    base = {"demo": parse_policy(policy_doc(), "file")}
    state = ControlState()
    state.apply(policy_key("demo"), _entry(2, deadline_ms=900))
    live = merged(base, base, state)
    assert (live["demo"].version, live["demo"].deadline_ms) == (2, 900)
    state.apply(policy_key("demo"), _entry(3, stages=[]))  # invalid: no stages
    assert merged(base, live, state)["demo"].version == 2  # kept
    state.apply(policy_key("demo"), None)  # a tombstone: the file's again
    assert merged(base, live, state)["demo"].version == 1


def test_a_bad_policy_file_is_refused_before_kafka_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached
    broken = tmp_path / "demo.yaml"
    broken.write_text(yaml.safe_dump(policy_doc(stages=[])))
    cases = {
        str(tmp_path / "missing.yaml"): "no policy file",
        "deploy/policies/chat.yaml": "is the policy of 'chat', not 'demo'",
        str(broken): "stages",
    }
    for path, message in cases.items():
        assert main(["policy", "set", "demo", path]) == 2
        assert message in capsys.readouterr().err


def test_the_control_keys_are_the_keys_the_codec_gives_the_messages() -> None:
    assert model_key("a") == message_key(_reg("a"))
    assert policy_key("demo") == message_key(_entry(1))

"""The control plane's pure parts: folding the control topic, promote and retire
rewrites of policy documents, and the deployers' bookkeeping (docker with a fake SDK)."""

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
from services.control.deployers import DockerDeployer, effective_spec
from services.control.policies import champion_of, mentions, promote, retire
from services.control.state import ControlState, model_key, policy_key, policy_version_key
from services.rendezvous.live import merged
from services.rendezvous.policy import parse_policy
from services.workers.spec import load_spec
from tests.factories import policy_doc


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


class _Containers:
    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.stopped: list[str] = []

    def run(self, image: str, **kw: Any) -> Any:
        self.runs.append({"image": image, **kw})
        return type("C", (), {"name": kw["name"]})()

    def list(self, **kw: Any) -> list[Any]:
        outer = self

        class Container:
            def stop(self, timeout: int) -> None:
                outer.stopped.append(kw["filters"]["label"])

            def remove(self) -> None:
                return None

        return [Container()] if self.runs else []


def test_the_docker_deployer_runs_the_worker_command_on_the_network() -> None:
    containers = _Containers()
    client = type("Client", (), {"containers": containers})()
    docker = DockerDeployer("rdv-worker:1", "rendezvous", client=client)
    assert docker.stop("chall") is False
    spec = load_spec("echo:name=chall,role=challenger,endpoints=demo")
    started = docker.start(spec, {"RDV_KAFKA_BOOTSTRAP": "kafka:9092", "HOME": "/root"})
    [run] = containers.runs
    assert run["image"] == "rdv-worker:1"
    assert run["command"][:4] == ["python", "-m", "services.workers", "--model"]
    assert run["network"] == "rendezvous"
    assert run["environment"] == {"RDV_KAFKA_BOOTSTRAP": "kafka:9092"}  # RDV_* only
    assert started.where == "container rdv-chall"
    assert docker.stop("chall") is True
    assert containers.stopped == ["rdv.model=chall"]


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

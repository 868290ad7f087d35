"""Model specs: the repo's files, the inline form, and every way a spec can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.messages import Role
from services.common.spec import BatchSpec, ModelSpec, load_spec, load_spec_file, parse_inline

SPECS = Path(__file__).resolve().parents[3] / "models" / "specs"


@pytest.mark.parametrize(
    ("file", "runtime", "role"),
    [
        ("fast", "echo", Role.CHAMPION),
        ("slow", "echo", Role.CHALLENGER),
        ("flaky", "failing", Role.CHALLENGER),
    ],
)
def test_the_local_stack_specs_load(file: str, runtime: str, role: Role) -> None:
    spec = load_spec(str(SPECS / f"{file}.yaml"))
    assert (spec.name, spec.runtime, spec.role, spec.endpoints) == (file, runtime, role, ["demo"])
    assert spec.group_id == f"rdv.model.{file}"


def test_the_local_stack_latencies() -> None:
    assert load_spec(str(SPECS / "fast.yaml")).params == {"latency_ms": 2}
    assert load_spec(str(SPECS / "slow.yaml")).params == {"latency_ms": 150}


def test_a_yaml_file_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "m.yml"
    path.write_text(
        "name: ood-1\nversion: 3\nruntime: latency\nrole: detector\n"
        "endpoints: [demo, chat]\nparams: {latency_ms: 5, seed: 1}\n"
        "batch: {max_size: 8, max_wait_ms: 0.5}\n"
    )
    spec = load_spec(str(path))
    assert spec.version == "3"  # a YAML number is read as the version string
    assert spec.endpoints == ["demo", "chat"]
    assert spec.batch == BatchSpec(max_size=8, max_wait_ms=0.5)
    assert spec.params == {"latency_ms": 5, "seed": 1}


def test_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"name": "j", "runtime": "echo", "role": "canary", "endpoints": ["demo"]}')
    spec = load_spec(str(path))
    assert (spec.version, spec.batch, spec.params) == ("1", BatchSpec(), {})


def test_the_inline_form() -> None:
    spec = parse_inline(
        "latency:name=slow,role=challenger,endpoints=demo+chat,version=2b,"
        "latency_ms=100,slow_share=0.2,slow_ms=900,seed=7,label=blue,warm=true,"
        "max_size=16,max_wait_ms=3"
    )
    assert spec == ModelSpec(
        name="slow",
        version="2b",
        runtime="latency",
        role=Role.CHALLENGER,
        endpoints=["demo", "chat"],
        params={
            "latency_ms": 100,
            "slow_share": 0.2,
            "slow_ms": 900,
            "seed": 7,
            "label": "blue",
            "warm": True,
        },
        batch=BatchSpec(max_size=16, max_wait_ms=3),
    )


def test_the_inline_example_of_the_docs() -> None:
    spec = load_spec("echo:name=fast,role=champion,endpoints=demo,latency_ms=2")
    assert (spec.name, spec.role, spec.params) == ("fast", Role.CHAMPION, {"latency_ms": 2})


def test_non_finite_numbers_stay_strings() -> None:
    spec = parse_inline("echo:name=a,role=decoy,endpoints=demo,x=NaN,y=Infinity")
    assert spec.params == {"x": "NaN", "y": "Infinity"}


def test_a_spec_makes_its_registration() -> None:
    reg = parse_inline("echo:name=a,role=canary,endpoints=demo").registration("ops", 5)
    assert (reg.name, reg.role, reg.runtime, reg.changed_ms) == ("a", Role.CANARY, "echo", 5)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty model spec"),
        (":name=a", "must start with a runtime"),
        ("echo:name=a,role=champion", "endpoints: Field required"),
        ("echo:role=champion,endpoints=demo", "name: Field required"),
        ("echo:name=Fast,role=champion,endpoints=demo", "name: String should match pattern"),
        ("echo:name=a,role=king,endpoints=demo", "role: Input should be 'champion'"),
        ("echo:name=a,role=champion,endpoints=", "endpoints: List should have at least 1"),
        ("echo:name=a,role=champion,endpoints=demo+demo", "listed twice"),
        ("echo:name=a,role=champion,endpoints=Demo", r"endpoints\.0: String should match"),
        ("nope:name=a,role=champion,endpoints=demo", "unknown runtime 'nope'; known: echo"),
        ("echo:name=a,name=b", "'name' is given twice"),
        ("echo:name=a,latency", "expected key=value, got 'latency'"),
        ("echo:name=a,role=champion,endpoints=demo,max_size=0", "batch.max_size"),
        ("echo:name=a,role=champion,endpoints=demo,max_wait_ms=-1", "batch.max_wait_ms"),
    ],
)
def test_invalid_inline_specs_say_what_is_wrong(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_spec(text)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("- a\n- b\n", "must hold one mapping, not list"),
        ("name: [unclosed\n", "not valid YAML/JSON"),
        (
            "name: a\nruntime: echo\nrole: champion\nendpoints: [demo]\nbatch_size: 3\n",
            "batch_size: Extra inputs",
        ),
        (
            "name: a\nruntime: echo\nrole: champion\nendpoints: demo\n",
            "endpoints: Input should be a valid list",
        ),
    ],
)
def test_invalid_spec_files_say_what_is_wrong(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        load_spec_file(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read model spec .*No such file"):
        load_spec(str(tmp_path / "absent.yaml"))

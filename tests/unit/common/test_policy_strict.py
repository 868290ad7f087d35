"""One policy schema: files and control entries are parsed by the same strict rules, and
the gateway's endpoint view is a projection of the policy the rendezvous reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.endpoints import EndpointSpec, load_endpoints
from services.common.errors import ConfigError
from services.common.messages import PolicyEntry
from services.common.policy import MAX_DEADLINE_MS, load_policies, policy_from_entry
from tests.factories import policy_doc

POLICIES = Path(__file__).resolve().parents[3] / "deploy" / "policies"
GATE = {"detector": "ood", "wait_ms": 200, "when_flagged": {"output": "no"}}


def _file(folder: Path, doc: dict[str, Any]) -> Path:
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _entry_error(doc: dict[str, Any]) -> str:
    entry = PolicyEntry(endpoint="demo", version=2, policy=doc, changed_by="t", changed_ms=1)
    with pytest.raises(ConfigError) as caught:
        policy_from_entry(entry)
    return caught.value.message


UNKNOWN = [
    ("top-level", policy_doc(fallback="slow"), "fallback"),
    ("in-a-stage", policy_doc(stages=[{"until_ms": "deadline", "accept": "any", "x": 1}]), "x"),
    ("in-the-gate", policy_doc(ood={**GATE, "detector": "slow", "threshold": 3}), "threshold"),
]


@pytest.mark.parametrize(("doc", "field"), [c[1:] for c in UNKNOWN], ids=[c[0] for c in UNKNOWN])
def test_an_unknown_field_in_a_policy_file_is_an_error_naming_it(
    tmp_path: Path, doc: dict[str, Any], field: str
) -> None:
    path = _file(tmp_path, doc)
    for load in (load_policies, load_endpoints):  # the rendezvous's and the gateway's reading
        with pytest.raises(ConfigError) as caught:
            load(path)
        message = caught.value.message
        assert str(path) in message
        assert field in message
        assert "Extra inputs are not permitted" in message
        # exactly the error a control entry carrying the same document gets
        assert message.split(": ", 1)[1] == _entry_error(doc).split(": ", 1)[1]


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"stages": []}, "stages"),
        ({"deadline_ms": MAX_DEADLINE_MS + 1}, "deadline_ms"),
        ({"deadline_ms": "500"}, "deadline_ms"),
        ({"models": ["fast", "fast"]}, "twice"),
    ],
    ids=["no-stages", "deadline-past-the-limit", "deadline-as-text", "roster-twice"],
)
def test_the_gateway_refuses_what_the_rendezvous_refuses(
    tmp_path: Path, over: dict[str, Any], fragment: str
) -> None:
    path = _file(tmp_path, policy_doc(**over))
    with pytest.raises(ConfigError) as by_rendezvous:
        load_policies(path)
    with pytest.raises(ConfigError) as by_gateway:
        load_endpoints(path)
    assert fragment in by_gateway.value.message
    assert by_gateway.value.message == by_rendezvous.value.message


def test_the_gateway_and_the_rendezvous_get_the_same_view_of_a_file(tmp_path: Path) -> None:
    doc = policy_doc(deadline_ms=900, models=["fast", "slow", "ood"], ood=GATE)
    path = _file(tmp_path, doc)
    policy = load_policies(path)["demo"]
    spec = load_endpoints(path)["demo"]
    assert spec == EndpointSpec.of(policy)
    assert (spec.endpoint, spec.deadline_ms, spec.models) == ("demo", 900, ("fast", "slow", "ood"))
    assert spec.detector == "ood"
    assert spec.answering_models == ["fast", "slow"]  # the detector never answers


def test_a_control_entry_gives_the_gateway_the_view_of_the_same_document(tmp_path: Path) -> None:
    doc = policy_doc(ood={**GATE, "detector": "slow"})
    entry = PolicyEntry(endpoint="demo", version=3, policy=doc, changed_by="t", changed_ms=1)
    from_entry = EndpointSpec.of(policy_from_entry(entry))
    assert from_entry == load_endpoints(_file(tmp_path, doc))["demo"]
    assert from_entry.answering_models == ["fast"]


def test_every_deployed_policy_file_is_strictly_valid() -> None:
    files = sorted(p for p in POLICIES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    assert files
    for file in files:
        policies = load_policies(file)
        assert load_endpoints(file) == {e: EndpointSpec.of(p) for e, p in policies.items()}

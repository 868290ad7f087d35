"""Policy documents: the demo loads, every validation rule names the file that broke it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from services.common.endpoints import EndpointSpec, load_endpoints
from services.common.errors import ConfigError
from services.common.messages import ErrorBody, PolicyEntry
from services.common.policy import Policy, load_policies, parse_policy, policy_from_entry
from tests.factories import policy_doc

POLICIES = Path(__file__).resolve().parents[3] / "deploy" / "policies"


_doc = policy_doc


def _write(folder: Path, doc: dict[str, Any], name: str = "p.yaml") -> Path:
    path = folder / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc))
    return path


def test_demo_policy_loads() -> None:
    policies = load_policies(POLICIES)
    demo = policies["demo"]
    assert demo.deadline_ms == 1000
    assert demo.version == 1
    assert demo.models == ("fast", "slow")
    assert [s.until_ms for s in demo.stages] == [300, 800, "deadline"]
    assert [s.accept for s in demo.stages] == [("fast",), ("fast", "slow"), "any"]
    assert demo.default.error_body() == ErrorBody(
        code="deadline_exceeded", message="no acceptable answer by the deadline"
    )


def test_the_gateway_reads_the_same_documents() -> None:
    policies = load_policies(POLICIES)
    assert load_endpoints(POLICIES) == {e: EndpointSpec.of(p) for e, p in policies.items()}


def test_defaults_version_and_default_answer(tmp_path: Path) -> None:
    doc = _doc(models=[])
    doc.pop("endpoint")
    policy = load_policies(_write(tmp_path, {"endpoint": "bare", **doc}))["bare"]
    assert policy.version == 1
    assert policy.canary is None
    body = policy.default.error_body()
    assert body is not None
    assert body.code == "deadline_exceeded"


def test_an_empty_roster_accepts_any_named_model(tmp_path: Path) -> None:
    doc = _doc(
        models=[],
        stages=[{"until_ms": 5, "accept": ["x"]}, {"until_ms": "deadline", "accept": ["y"]}],
    )
    assert load_policies(_write(tmp_path, doc))["demo"].models == ()


@pytest.mark.parametrize("output", [None, {"label": "unknown"}, [1, 2], "safe"])
def test_a_configured_output_is_a_default(tmp_path: Path, output: Any) -> None:
    policy = load_policies(_write(tmp_path, _doc(default={"output": output})))["demo"]
    assert policy.default.output == output
    assert policy.default.error_body() is None


def test_json_documents_load(tmp_path: Path) -> None:
    canary = {"model": "slow", "share": 0.1, "sticky_attribute": "user"}
    policy = load_policies(_write(tmp_path, _doc(canary=canary), "p.json"))["demo"]
    assert policy.canary is not None
    assert (policy.canary.model, policy.canary.share, policy.canary.sticky_attribute) == (
        "slow",
        0.1,
        "user",
    )


def _stages(*pairs: tuple[Any, Any]) -> list[dict[str, Any]]:
    return [{"until_ms": u, "accept": a} for u, a in pairs]


def _gate(
    detector: str = "slow", wait_ms: int = 200, when: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "detector": detector,
        "wait_ms": wait_ms,
        "when_flagged": {"output": "no"} if when is None else when,
    }


def test_an_ood_gate_with_a_safe_reply_or_a_fallback_model(tmp_path: Path) -> None:
    reply = {"text": "I can help with travel and banking."}
    safe = load_policies(_write(tmp_path, _doc(ood=_gate(when={"output": reply}))))["demo"]
    assert safe.ood is not None
    assert (safe.ood.detector, safe.ood.wait_ms) == ("slow", 200)
    assert (safe.ood.when_flagged.output, safe.ood.when_flagged.model) == (reply, None)

    fallback = load_policies(_write(tmp_path, _doc(ood=_gate(when={"model": "fast"}))))["demo"]
    assert fallback.ood is not None
    assert fallback.ood.when_flagged.model == "fast"


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-stages", _doc(stages=[]), "stages"),
    (
        "not-increasing",
        _doc(stages=_stages((300, ["fast"]), (300, ["slow"]), ("deadline", "any"))),
        "until_ms must increase",
    ),
    (
        "deadline-in-the-middle",
        _doc(stages=_stages(("deadline", ["fast"]), ("deadline", "any"))),
        "only the last stage",
    ),
    ("last-not-deadline", _doc(stages=_stages((300, ["fast"]))), "last stage must have until_ms"),
    ("stage-past-deadline", _doc(stages=_stages((1000, ["fast"]), ("deadline", "any"))), "below"),
    ("zero-until", _doc(stages=_stages((0, ["fast"]), ("deadline", "any"))), "until_ms"),
    ("text-until", _doc(stages=_stages(("300", ["fast"]), ("deadline", "any"))), "until_ms"),
    ("unknown-model", _doc(stages=_stages((300, ["medium"]), ("deadline", "any"))), "medium"),
    ("empty-accept", _doc(stages=_stages((300, []), ("deadline", "any"))), "accept"),
    ("accept-twice", _doc(stages=_stages((300, ["fast", "fast"]), ("deadline", "any"))), "twice"),
    ("accept-typo", _doc(stages=_stages((300, "all"), ("deadline", "any"))), "accept"),
    ("roster-twice", _doc(models=["fast", "fast"]), "twice"),
    ("canary-not-in-roster", _doc(canary={"model": "medium", "share": 0.1}), "canary model"),
    ("canary-share-zero", _doc(canary={"model": "slow", "share": 0}), "share"),
    ("canary-share-one", _doc(canary={"model": "slow", "share": 1}), "share"),
    ("canary-extra-key", _doc(canary={"model": "slow", "share": 0.1, "sticky": "u"}), "sticky"),
    (
        "default-both",
        _doc(default={"output": 1, "error": {"code": "x", "message": "y"}}),
        "exactly one",
    ),
    ("default-neither", _doc(default={}), "exactly one"),
    ("default-error-no-code", _doc(default={"error": {"message": "y"}}), "code"),
    ("unknown-key", _doc(fallback="slow"), "fallback"),
    ("bad-endpoint", _doc(endpoint="Demo!"), "endpoint"),
    ("no-deadline", {k: v for k, v in _doc().items() if k != "deadline_ms"}, "deadline_ms"),
    ("deadline-too-long", _doc(deadline_ms=600_001), "deadline_ms"),
    ("version-zero", _doc(version=0), "version"),
    ("ood-wait-at-deadline", _doc(ood=_gate(wait_ms=1000)), "wait_ms 1000 must be below"),
    ("ood-detector-not-in-roster", _doc(ood=_gate(detector="ood")), "['ood'] are not in models"),
    ("ood-fallback-not-in-roster", _doc(ood=_gate(when={"model": "big"})), "['big']"),
    ("ood-fallback-is-detector", _doc(ood=_gate(when={"model": "slow"})), "cannot be the detector"),
    ("ood-when-both", _doc(ood=_gate(when={"model": "fast", "output": "x"})), "exactly one"),
    ("ood-when-neither", _doc(ood=_gate(when={})), "exactly one"),
    ("ood-no-wait", _doc(ood={"detector": "slow", "when_flagged": {"output": "x"}}), "wait_ms"),
    ("ood-extra-key", _doc(ood={**_gate(), "threshold": 3}), "threshold"),
]


@pytest.mark.parametrize(("doc", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_policies_name_the_file_and_the_rule(
    tmp_path: Path, doc: dict[str, Any], fragment: str
) -> None:
    path = _write(tmp_path, doc, "broken.yaml")
    with pytest.raises(ConfigError) as caught:
        load_policies(path)
    assert str(path) in caught.value.message
    assert fragment in caught.value.message


def test_the_same_endpoint_twice_is_an_error(tmp_path: Path) -> None:
    first = _write(tmp_path, _doc(), "a.yaml")
    second = _write(tmp_path, _doc(version=2), "b.json")
    with pytest.raises(ConfigError, match="defined twice") as caught:
        load_policies(tmp_path)
    assert str(first) in caught.value.message
    assert str(second) in caught.value.message


def test_unreadable_documents_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"p\.yaml"):
        load_policies(tmp_path)


def test_policies_are_frozen() -> None:
    policy = parse_policy(_doc(), "test")
    with pytest.raises(ValidationError):
        policy.deadline_ms = 5  # type: ignore[misc]
    assert isinstance(policy.stages, tuple)


def _entry(policy: dict[str, Any], endpoint: str = "demo", version: int = 7) -> PolicyEntry:
    return PolicyEntry(
        endpoint=endpoint, version=version, policy=policy, changed_by="test", changed_ms=1
    )


def test_a_control_entry_gives_its_version() -> None:
    policy = policy_from_entry(_entry(_doc(version=2)))
    assert isinstance(policy, Policy)
    assert policy.version == 7


def test_a_control_entry_for_another_endpoint_is_refused() -> None:
    with pytest.raises(ConfigError, match="policy/other"):
        policy_from_entry(_entry(_doc(), endpoint="other"))
    with pytest.raises(ConfigError, match="policy/demo"):
        policy_from_entry(_entry(_doc(stages=[])))

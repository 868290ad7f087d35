"""The gateway's endpoints follow the control topic's policy entries, taking exactly
those the rendezvous takes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from services.common.endpoints import EndpointSpec
from services.common.messages import PolicyEntry
from services.control.state import ControlState, policy_key
from services.gateway.live import merged
from tests.factories import policy_doc

BASE = {"demo": EndpointSpec(endpoint="demo", deadline_ms=1000, models=("fast", "slow"))}


def _state(key: str, version: int, **over: Any) -> ControlState:
    state = ControlState()
    entry = PolicyEntry(
        endpoint=key, version=version, policy=policy_doc(**over), changed_by="t", changed_ms=1
    )
    state.apply(policy_key(key), entry)
    return state


def test_a_policy_entry_sets_its_endpoints_deadline_roster_and_gate() -> None:
    gate = {"detector": "slow", "wait_ms": 200, "when_flagged": {"output": "no"}}
    live = merged(BASE, BASE, _state("demo", 2, deadline_ms=900, ood=gate))
    assert live["demo"] == EndpointSpec(
        endpoint="demo", deadline_ms=900, models=("fast", "slow"), detector="slow"
    )


@pytest.mark.parametrize(
    "over",
    [{"endpoint": "other"}, {"stages": []}],
    ids=["names-another-endpoint", "no-stages"],
)
def test_an_entry_the_rendezvous_refuses_is_ignored(
    over: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    current = {"demo": replace(BASE["demo"], deadline_ms=700)}
    with caplog.at_level("ERROR", logger="rdv.control"):
        live = merged(BASE, current, _state("demo", 3, deadline_ms=900, **over))
    assert live == current  # the endpoint keeps what it had; no endpoint "other" appears
    assert "invalid policy entry ignored" in caplog.text

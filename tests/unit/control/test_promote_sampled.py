"""Promote refuses a sampled model (spec ``sample`` < 1): a champion answers every
request, and a sampled model scores only its share of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from services.common.messages import ControlEntry
from services.common.spec import parse_inline
from services.control.changes import Control
from services.control.errors import ControlConflictError
from services.control.state import ControlState
from tests.factories import policy_doc


class Ledger:
    """The control topic as a list of records."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, ControlEntry | None]] = []

    def read(self) -> ControlState:
        state = ControlState()
        for key, entry in self.records:
            state.apply(key, entry)
        return state

    def publish(self, entries: Sequence[tuple[bytes, ControlEntry | None]]) -> None:
        self.records += entries


def _control(tmp_path: Path) -> tuple[Control, Ledger]:
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(policy_doc()))
    ledger = Ledger()
    return Control(ledger, tmp_path, wall_ms=lambda: 1.0), ledger


def test_a_sampled_model_is_registered_with_its_sample_but_not_promoted(tmp_path: Path) -> None:
    control, ledger = _control(tmp_path)
    reg = control.deploy(
        parse_inline("echo:name=llm2,role=challenger,endpoints=demo,sample=0.1"), "t"
    )
    assert reg.sample == 0.1
    assert control.models()[0].sample == 0.1  # read back from the ledger
    written = len(ledger.records)

    with pytest.raises(ControlConflictError, match=r"llm2 scores only a 10% sample"):
        control.promote("llm2", None, "t")
    assert len(ledger.records) == written  # nothing changed


def test_the_same_model_deployed_with_sample_one_is_promoted(tmp_path: Path) -> None:
    control, _ = _control(tmp_path)
    control.deploy(parse_inline("echo:name=llm2,role=challenger,endpoints=demo,sample=0.1"), "t")
    control.deploy(parse_inline("echo:name=llm2,role=challenger,endpoints=demo"), "t")
    (change,) = control.promote("llm2", None, "t")
    assert change.endpoint == "demo"

"""The control follower under bad records: each is counted and skipped, the rest of its
batch is applied, and neither the follower nor the service's start stops."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.common.codec import encode, message_key
from services.common.kafka import Record
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.control.follower import ControlFollower
from services.control.state import ControlState
from tests.factories import registration


class FakeConsumer:
    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def end_offsets(self, topic: str, partitions: int, timeout_s: float) -> dict[int, int]:
        return {0: len(self.records)} | dict.fromkeys(range(1, partitions), 0)

    def assign_from(self, topic: str, offsets: dict[int, int]) -> None:
        pass

    def consume(self, max_records: int, timeout_s: float) -> list[Record]:
        batch, self.records = self.records[:max_records], self.records[max_records:]
        return batch

    def close(self) -> None:
        pass


def _unusable(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("rdv_control_unusable_records_total", {"reason": reason}) or 0.0
    )


def _records(*values: tuple[bytes | None, bytes | None]) -> list[Record]:
    return [Record("c", 0, i, k, v) for i, (k, v) in enumerate(values)]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe not utf-8", "unreadable"),
        (b"{not json", "unreadable"),
        (b'{"kind": "request", "v": 1}', "unreadable"),
        (b'{"kind": "model_registration", "v": 99}', "unreadable"),
    ],
)
def test_garbage_is_counted_and_the_records_after_it_are_applied(value: bytes, reason: str) -> None:
    changes: list[tuple[str, Any]] = []
    follower = ControlFollower(
        KafkaSettings(bootstrap="127.0.0.1:1"),
        load_topics(prefix="unit."),
        lambda _s, kind, entry: changes.append((kind, entry)),
    )
    good = registration("m1")
    follower._consumer = FakeConsumer(  # type: ignore[assignment]
        _records((b"model/x", value), (message_key(good), encode(good)))
    )
    before = _unusable(reason)

    follower.start(timeout_s=5)  # before: a raise here stopped the service's start
    follower.stop()

    assert _unusable(reason) == before + 1
    assert changes == [("model", good)]
    assert follower.state.models == {"m1": good}


def test_a_failing_callback_skips_one_record_not_the_rest() -> None:
    seen: list[str] = []

    def on_change(_state: ControlState, _kind: str, entry: Any) -> None:
        seen.append(entry.name)
        if entry.name == "bad":
            raise RuntimeError("callback bug")

    follower = ControlFollower(
        KafkaSettings(bootstrap="127.0.0.1:1"), load_topics(prefix="unit."), on_change
    )
    regs = [registration("bad"), registration("good")]
    follower._consumer = FakeConsumer(  # type: ignore[assignment]
        _records(*((message_key(r), encode(r)) for r in regs))
    )
    before = _unusable("callback")
    follower.start(timeout_s=5)
    follower.stop()
    assert seen == ["bad", "good"]
    assert _unusable("callback") == before + 1


def test_an_entry_the_service_refuses_is_counted_once_and_not_folded_in() -> None:
    from services.common.messages import PolicyEntry  # noqa: PLC0415
    from services.common.policy import check_policy_entry  # noqa: PLC0415

    def entry(version: int, policy: dict[str, Any]) -> PolicyEntry:
        return PolicyEntry(
            endpoint="demo", version=version, policy=policy, changed_by="t", changed_ms=1
        )

    good = entry(
        2,
        {
            "endpoint": "demo",
            "deadline_ms": 1000,
            "models": ["fast"],
            "stages": [{"until_ms": "deadline", "accept": ["fast"]}],
            "default": {"error": {"code": "deadline_exceeded", "message": "late"}},
        },
    )
    bad = entry(3, {**good.policy, "surprise": True})  # a field the schema does not know
    changes: list[str] = []
    follower = ControlFollower(
        KafkaSettings(bootstrap="127.0.0.1:1"),
        load_topics(prefix="unit."),
        lambda _s, kind, _e: changes.append(kind),
        check=check_policy_entry,
    )
    follower._consumer = FakeConsumer(  # type: ignore[assignment]
        _records((b"policy/demo", encode(good)), (b"policy/demo", encode(bad)))
    )
    before = _unusable("refused")
    follower.start(timeout_s=5)
    follower.stop()
    assert _unusable("refused") == before + 1  # before: logged at each change, never counted
    assert changes == ["policy"]
    assert follower.state.policies["demo"] == good

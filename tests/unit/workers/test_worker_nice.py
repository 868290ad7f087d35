"""RDV_WORKER_NICE: the thread that loads and runs the model yields the CPU by that much
before the model loads; 0 leaves the priority alone."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.spec import load_spec
from services.common.topics import load_topics
from services.workers.service import WorkerService
from services.workers.settings import WorkerSettings


class _Model:
    ready = False

    def load(self) -> None:
        raise RuntimeError("stop before serving")


class _Consumer:
    closed = False

    def lag(self) -> dict[Any, int]:
        return {}

    def close(self) -> None:
        self.closed = True


def _run(nice: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "nice", lambda n: calls.append((threading.get_ident(), n)))
    consumer = _Consumer()
    svc = WorkerService(
        spec=load_spec("echo:name=shadow,role=challenger,endpoints=demo"),
        model=_Model(),  # type: ignore[arg-type]
        consumer=consumer,  # type: ignore[arg-type]
        producer=object(),  # type: ignore[arg-type]
        topics=load_topics(prefix="unit."),
        settings=WorkerSettings(nice=nice),
    )
    with pytest.raises(RuntimeError, match="stop before serving"):
        svc.run()
    assert consumer.closed
    return calls


def test_the_model_thread_is_niced_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(10, monkeypatch) == [(threading.get_ident(), 10)]
    assert _run(0, monkeypatch) == []


def test_a_nice_value_out_of_range_is_refused() -> None:
    with pytest.raises(ValidationError, match="nice"):
        WorkerSettings(nice=20)

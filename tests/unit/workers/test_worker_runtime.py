"""The runtime interface, its registry and the shipped test models (no sleeps timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import JsonValue

from services.common import runtimes
from services.common.errors import ConfigError
from services.common.runtimes import register_runtime, runtime_names
from services.workers.chat_runtime import ChatRuntime
from services.workers.runtime import (
    ModelRuntime,
    Prediction,
    PredictionError,
    create_runtime,
    resolve_runtime,
)
from services.workers.testmodels import EchoModel, FailingModel, LatencyModel


class Doubler(ModelRuntime):
    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        return [p * 2 if isinstance(p, int) else p for p in payloads]


def test_the_test_models_are_registered_and_torch_stays_unimported() -> None:
    assert {"echo", "latency", "failing", "llama-chat"} <= set(runtime_names())
    assert resolve_runtime("echo") is EchoModel
    # in a fresh interpreter: other tests in this process may have imported torch
    code = (
        "import sys; from services.workers.runtime import resolve_runtime; "
        "resolve_runtime('echo'); resolve_runtime('failing'); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False"


def test_a_runtime_can_be_named_as_module_and_class() -> None:
    model = create_runtime(f"{__name__}:Doubler", {})
    model.load()
    assert model.predict_batch([1, "a"]) == [2, "a"]


def test_registering_a_runtime_imports_it_only_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "RUNTIMES", dict(runtimes.RUNTIMES))
    register_runtime("heavy", "tests.unit.not_a_module:Model")
    assert "heavy" in runtime_names()
    with pytest.raises(ConfigError, match="runtime 'heavy' cannot be imported"):
        resolve_runtime("heavy")
    with pytest.raises(ValueError, match="module:Class"):
        register_runtime("bad", "no_colon")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("nope", "unknown runtime 'nope'"),
        ("services.workers.testmodels:Missing", "has no 'Missing'"),
        ("services.workers.testmodels:EchoParams", "is not a ModelRuntime subclass"),
    ],
)
def test_unusable_runtimes_are_config_errors(name: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_runtime(name)


def test_ready_follows_load_and_unload() -> None:
    model = EchoModel({})
    assert not model.ready
    model.load()
    assert model.ready
    model.unload()
    model.unload()  # idempotent
    assert not model.ready


def test_echo_returns_the_payloads() -> None:
    model = EchoModel({"latency_ms": 0})
    assert model.predict_batch([{"a": 1}, None, "x"]) == [{"a": 1}, None, "x"]
    assert model.predict_batch([]) == []
    assert EchoModel({"latency_ms": 2}).draw_ms() == 2


def test_latency_draws_are_reproducible_with_a_seed() -> None:
    params: dict[str, JsonValue] = {"latency_ms": 10, "jitter_ms": 5, "seed": 42}
    a, b = LatencyModel(params), LatencyModel(params)
    draws = [a.draw_ms() for _ in range(50)]
    assert draws == [b.draw_ms() for _ in range(50)]
    assert all(10 <= d <= 15 for d in draws)
    assert len(set(draws)) > 1


def test_a_slow_share_of_requests_takes_slow_ms() -> None:
    model = LatencyModel({"latency_ms": 1, "slow_share": 0.2, "slow_ms": 900, "seed": 3})
    draws = [model.draw_ms() for _ in range(2000)]
    slow = sum(d == 900 for d in draws) / len(draws)
    assert 0.15 < slow < 0.25
    assert set(draws) == {1, 900}
    assert {LatencyModel({"slow_share": 1, "slow_ms": 7}).draw_ms() for _ in range(5)} == {7}


def test_failing_always_raises_its_message() -> None:
    model = FailingModel({"message": "down for maintenance"})
    with pytest.raises(PredictionError, match="down for maintenance"):
        model.predict_batch([1])


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("echo", {"jitter_ms": 1}, "runtime 'echo': jitter_ms: Extra inputs"),
        ("echo", {"latency_ms": "slow"}, "latency_ms: Input should be a valid number"),
        ("latency", {"slow_share": 1.5}, "slow_share: Input should be less than or equal to 1"),
        ("failing", {"message": ""}, "message: String should have at least 1 character"),
    ],
)
def test_invalid_params_are_config_errors(
    name: str, params: dict[str, JsonValue], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        create_runtime(name, params)


def test_the_chat_runtime_takes_int8_weights_and_refuses_unknown_schemes() -> None:
    assert ChatRuntime({"quantize": "int8"}).config.quantize == "int8"
    assert ChatRuntime({"quantize": "auto"}).config.quantize == "auto"
    assert ChatRuntime({}).config.quantize == "none"
    with pytest.raises(ConfigError, match="quantize"):
        ChatRuntime({"quantize": "int4"})

"""The runtime seam of the batching engine, without llama.cpp: a runtime that fuses the
prompt pass with the decode step gives the same answers, and the per-machine choices
(runtime, and llama.cpp's weight format by a timed probe) follow their rules."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from transformers import LlamaForCausalLM

from models.llama import BatchEngine, EngineConfig, SamplingParams
from models.llama.cpp_weights import ProbeResult, choose
from models.llama.cpu import choose_runtime
from models.llama.errors import DecodeError, ModelLoadError
from models.llama.generate import PaddedBatch, TorchForward
from tests.unit.models.test_llama_batching import PROMPTS, alone, by_id
from tests.unit.models.test_llama_chat import tiny_model


class FusedTorch(TorchForward):
    """TorchForward that says it fuses: the engine then calls decode_and_prefill."""

    fused = True

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__(model, 0)
        self.fused_calls = 0

    def decode_and_prefill(
        self, state: PaddedBatch, prompts: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, PaddedBatch, torch.Tensor]:
        self.fused_calls += 1
        return super().decode_and_prefill(state, prompts)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model()


def test_a_fused_runtime_answers_as_each_request_alone(model: LlamaForCausalLM) -> None:
    forward = FusedTorch(model)
    engine = BatchEngine(forward, EngineConfig(max_batch_size=3))
    params = SamplingParams(max_tokens=12)
    ids, results = [], {}
    for prompt in PROMPTS:  # each joins a running batch: prompt pass and decode fused
        ids.append(engine.submit(prompt, params))
        results |= by_id(engine.step())
    results |= by_id(engine.run())
    assert forward.fused_calls > 0
    for rid, prompt in zip(ids, PROMPTS, strict=True):
        assert results[rid].token_ids == alone(model, prompt, params)


def test_the_engine_takes_a_model_or_a_runtime(model: LlamaForCausalLM) -> None:
    assert isinstance(BatchEngine(model).forward, TorchForward)
    forward = FusedTorch(model)
    assert BatchEngine(forward).forward is forward
    assert BatchEngine(forward).context_window == forward.context_window


def test_a_failed_step_resets_the_runtime_too(model: LlamaForCausalLM) -> None:
    class Failing(FusedTorch):
        resets = 0

        def decode(self, state: PaddedBatch) -> torch.Tensor:
            raise DecodeError("no room")

        def reset(self) -> None:
            self.resets += 1

    forward = Failing(model)
    engine = BatchEngine(forward)
    engine.submit(PROMPTS[0], SamplingParams(max_tokens=4))
    engine.step()  # prefill only
    with pytest.raises(DecodeError):
        engine.step()
    assert engine.reset() == ["req-1"]
    assert forward.resets == 1
    assert not engine.has_work


@pytest.mark.parametrize(
    ("setting", "device", "source", "installed", "expected"),
    [
        ("auto", "cpu", None, True, "llama.cpp"),
        ("auto", "cpu", "/m/model.gguf", True, "llama.cpp"),
        ("auto", "cpu", "/m/hf-folder", True, "torch"),
        ("auto", "cuda", None, True, "torch"),
        ("auto", "cpu", None, False, "torch"),
        ("torch", "cpu", None, True, "torch"),
        ("llama.cpp", "cpu", None, False, "llama.cpp"),  # then loading says how to build it
    ],
)
def test_the_runtime_choice(
    setting: str, device: str, source: str | None, installed: bool, expected: str
) -> None:
    choice = choose_runtime(setting, device, source, installed)
    assert choice.runtime == expected
    assert choice.reason


class FakeForward:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_probe_keeps_the_fastest_format_and_closes_the_others() -> None:
    made: dict[str, FakeForward] = {}
    seconds = {"gguf": 0.9, "q8_0": 0.4, "f16": 0.6}

    def make(kind: str) -> FakeForward:
        if kind == "broken":
            raise ModelLoadError("cannot convert")
        made[kind] = FakeForward(kind)
        return made[kind]

    result, kept = choose(["gguf", "q8_0", "broken", "f16"], make, lambda f: seconds[f.name])
    assert result == ProbeResult(
        "q8_0", {"gguf": 900.0, "q8_0": 400.0, "broken": None, "f16": 600.0}
    )
    assert kept is made["q8_0"]
    assert not kept.closed
    assert made["gguf"].closed
    assert made["f16"].closed
    assert result.reason == "timed probe: gguf 900 ms, q8_0 400 ms, broken failed, f16 600 ms"


def test_a_probe_where_nothing_runs_is_a_load_error() -> None:
    def make(kind: str) -> FakeForward:
        raise ModelLoadError("no")

    with pytest.raises(ModelLoadError, match=r"no llama\.cpp weight format"):
        choose(["gguf"], make)

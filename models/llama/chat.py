"""The chat protocol as types, and a chat model over the batching engine.

Messages are rendered with the tokenizer's own chat template
(``apply_chat_template`` with the generation prompt appended); completions are
decoded without special tokens. ``ChatModel`` keeps the engine's shape: ``submit``
whenever a request arrives, ``step`` in the caller's loop; ``generate`` is the
blocking convenience for scripts and tests.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal, TypedDict

import torch

from models.llama.batching import BatchEngine, FinishReason, GenerationResult
from models.llama.config import EngineConfig, GrammarSpec, LoadConfig, SamplingParams
from models.llama.errors import InvalidRequestError, ModelLoadError
from models.llama.forward import Forward
from models.llama.grammar import Constraint, Grammars
from models.llama.loader import LoadedModel, load

Role = Literal["system", "user", "assistant"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


class Message(TypedDict):
    """One chat turn."""

    role: Role
    content: str


ChatParams = SamplingParams
"""``max_tokens``, ``temperature`` (0: greedy), ``top_p``, ``stop``, ``seed``, the
penalties and ``logprobs``."""

ChatResult = GenerationResult
"""``text``, ``finish_reason`` and the usage and timing figures of one answer."""

__all__ = ["ChatModel", "ChatParams", "ChatResult", "FinishReason", "Message", "Role", "build"]


class ChatModel:
    """A loaded chat model serving many conversations through one ``BatchEngine``."""

    def __init__(
        self,
        loaded: LoadedModel,
        engine: EngineConfig | None = None,
        *,
        forward: Forward[Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``forward`` runs the model's forward passes (None: ``loaded.model`` in torch)."""
        tokenizer = loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(f"the tokenizer of {loaded.report.source} has no chat template")
        self.loaded = loaded
        self.tokenizer = tokenizer
        eos = {int(t) for t in _as_list(loaded.model.generation_config.eos_token_id)}
        eos |= {int(t) for t in _as_list(tokenizer.eos_token_id)}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
        self.vocab_size = int(loaded.model.config.vocab_size)
        self.engine = BatchEngine(
            forward or loaded.model,
            engine,
            eos_token_ids=eos,
            pad_token_id=int(pad),
            decode=self.decode,
            constrain=self._constraint,
            clock=clock,
        )
        self._eos = eos
        self._grammars: Grammars | None = None

    def _constraint(self, spec: GrammarSpec) -> Constraint:
        """A request's grammar; the tokenizer's grammar tables are built on first use."""
        if self._grammars is None:
            self._grammars = Grammars(self.tokenizer, self.vocab_size, self._eos)
        return self._grammars.constraint(spec)

    @property
    def context_window(self) -> int:
        return self.engine.context_window

    @property
    def prompt_tokens_reused(self) -> int:
        """Prompt tokens the runtime took from a cached shared start instead of computing
        them, so far (llama.cpp; 0 on torch)."""
        return self.engine.forward.tokens_reused

    def close(self) -> None:
        """Free what the runtime holds outside Python (llama.cpp's model and cache)."""
        self.engine.forward.close()

    @property
    def has_work(self) -> bool:
        return self.engine.has_work

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """The prompt tokens of a conversation, ending with the assistant's turn opening."""
        _check_messages(messages)
        encoded = self.tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        ids = [t for t in encoded if isinstance(t, int)]
        if not ids or len(ids) != len(encoded):
            raise ModelLoadError("the tokenizer's chat template did not give a list of token ids")
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def token_text(self, token_id: int) -> str:
        """One token's text, special tokens included (a token holding part of a
        multi-byte character decodes as U+FFFD)."""
        return str(self.tokenizer.decode([token_id]))

    def submit(
        self,
        messages: Sequence[Message],
        params: ChatParams | None = None,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a conversation; ``deadline`` is on the engine's clock (monotonic s).

        Raises ``PromptTooLongError`` when the prompt fills the context window.
        """
        return self.engine.submit(
            self.encode(messages), params, deadline=deadline, request_id=request_id
        )

    def step(self) -> list[ChatResult]:
        """One engine step; the answers it finished."""
        return self.engine.step()

    def partial_texts(self, request_ids: Collection[str]) -> dict[str, str]:
        """The answer so far of each running request named (``BatchEngine.partial_texts``)."""
        return self.engine.partial_texts(request_ids)

    def submit_prompt(
        self,
        prompt: str,
        params: ChatParams | None = None,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a raw prompt the model continues (no chat template; the tokenizer's
        own special tokens, e.g. a BOS, are added as it adds them)."""
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        ids = [int(t) for t in self.tokenizer.encode(prompt)]
        return self.engine.submit(ids, params, deadline=deadline, request_id=request_id)

    def collect(self, request_ids: Sequence[str]) -> list[ChatResult]:
        """Step until the submitted requests named have finished; their results in that
        order (other requests in the engine go on meanwhile)."""
        wanted = set(request_ids)
        results: dict[str, ChatResult] = {}
        while wanted - results.keys():
            if not self.engine.has_work:  # another caller collected them: cannot happen here
                raise RuntimeError("the engine finished without answering every request")
            results.update((r.request_id, r) for r in self.step() if r.request_id in wanted)
        return [results[i] for i in request_ids]

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: ChatParams | None = None,
        *,
        deadline: float | None = None,
    ) -> list[ChatResult]:
        """Answer the conversations together (blocking); results in the order given."""
        return self.collect([self.submit(c, params, deadline=deadline) for c in conversations])


def build(config: LoadConfig | None = None, engine: EngineConfig | None = None) -> ChatModel:
    """Load a model (see ``LoadConfig``) and wrap it for chat, on the runtime the config
    names."""
    config = config or LoadConfig()
    if config.runtime == "torch":
        return ChatModel(load(config), engine)
    return _build_llama_cpp(config, engine or EngineConfig())


def _build_llama_cpp(config: LoadConfig, engine: EngineConfig) -> ChatModel:
    """The tokenizer, chat template and model config from transformers (the model's
    torch weights are dropped: llama.cpp computes from the GGUF file itself)."""
    from models.llama import cpp_weights  # noqa: PLC0415 - optional dependency
    from models.llama.cpp import LlamaCppForward  # noqa: PLC0415

    loaded = load(dataclasses.replace(config, runtime="torch", dtype="float32"))
    if loaded.report.kind != "gguf":
        raise ModelLoadError(
            f"the llama.cpp runtime runs a GGUF file; {loaded.report.source} is a folder"
        )
    torch.nn.Module.to(loaded.model, device="meta")  # frees the weights; config stays
    source = loaded.report.source

    def make(kind: str) -> LlamaCppForward:
        folder = loaded.report.folder.with_name(loaded.report.folder.name + ".llama-cpp")
        path = source if kind == "gguf" else cpp_weights.converted(source, kind, folder)
        return LlamaCppForward(
            path,
            threads=config.threads or 1,
            max_sequences=engine.max_batch_size,
            cache_tokens=engine.max_batch_tokens,
            context_window=loaded.context_window,
        )

    if config.cpp_weights == "auto":
        probe, forward = cpp_weights.choose(cpp_weights.PROBE_FORMATS, make)
        chosen, reason = probe.chosen, probe.reason
    else:
        forward, chosen, reason = make(config.cpp_weights), config.cpp_weights, "set"
    if forward.vocab_size != int(loaded.model.config.vocab_size):
        raise ModelLoadError(
            f"llama.cpp reads {forward.vocab_size} tokens in {loaded.report.source}; "
            f"the tokenizer's model config has {loaded.model.config.vocab_size}"
        )
    loaded.report = dataclasses.replace(
        loaded.report,
        dtype=f"{chosen} ({forward.description})",
        quantize=chosen,
        runtime="llama.cpp",
        chosen_by=reason,
    )
    return ChatModel(loaded, engine, forward=forward)


def _as_list(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise InvalidRequestError("a conversation needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise InvalidRequestError(f"message {i}: role must be one of {sorted(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise InvalidRequestError(f"message {i}: content must be a string")

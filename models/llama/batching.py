"""A continuous-batching generation engine driven one ``step()`` at a time.

The caller (the worker) submits requests whenever they arrive and calls ``step()``
in its own loop; there are no threads here. One step:

1. ends the requests whose deadline can no longer be met: the next step would
   finish after it (by the smoothed duration of past steps);
2. admits waiting requests, first come first served, while the batch has room
   (``max_batch_size``) and the token budget allows (``max_batch_tokens``), and
   prefills them together: they produce their first token now, before the running
   batch's decode, so a new request's first token does not wait for it;
3. decodes one token for every request that was already running (one batched
   forward pass), then merges the admitted ones in: they decode with the others from
   the next step. A runtime that can (``Forward.fused``: llama.cpp) runs the new
   prompts and the running batch's next tokens in one forward pass instead.

The forward passes belong to a runtime (``models.llama.forward.Forward``): a
transformers model (``generate.TorchForward``, the default) or llama.cpp
(``models.llama.cpp``); sampling, penalties, grammars and log-probabilities are
computed here on the logits either returns.

``step()`` returns the requests that finished in it. Deadlines and all timings are
on the injected ``clock`` (monotonic seconds by default).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from transformers import LlamaForCausalLM

from models.llama import generate
from models.llama.config import EngineConfig, GrammarSpec, SamplingParams
from models.llama.errors import InvalidRequestError, PromptTooLongError, RequestTooLargeError
from models.llama.forward import BatchState, Forward
from models.llama.sampling import TokenLogprob, choose, logprob_of, make_generator, penalise

FinishReason = Literal["stop", "length", "deadline"]
Decoder = Callable[[Sequence[int]], str]


class TokenConstraint(Protocol):
    """One request's grammar (models.llama.grammar.Constraint)."""

    def mask(self, logits: torch.Tensor, remaining: int | None = None) -> torch.Tensor: ...

    def accept(self, token: int) -> None: ...


Constrain = Callable[[GrammarSpec], TokenConstraint]


@dataclass(frozen=True)
class GenerationResult:
    """A finished request: its completion and what it cost.

    ``token_ids`` are all generated tokens (an end-of-sequence token included);
    ``text`` is their decoding, cut before a stop string. ``ttft_s`` is submission to
    first token (None when none came); ``tokens_per_s`` is completion tokens over the
    time since the request was admitted into the batch.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    duration_s: float
    tokens_per_s: float
    logprobs: tuple[TokenLogprob, ...] | None = None
    """Per generated token (an end-of-sequence token left out) when the request asked."""


@dataclass
class _Sequence:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    deadline: float | None
    submitted_at: float
    generator: torch.Generator | None
    constraint: TokenConstraint | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str | None = None
    decoded: tuple[int, str] = (0, "")  # (token count, their decoding): decoded once
    admitted_at: float | None = None
    first_token_at: float | None = None
    finish_reason: FinishReason | None = None

    @property
    def reserved_tokens(self) -> int:
        return len(self.prompt) + self.max_tokens


class BatchEngine:
    """Serves many generation requests at once over one model: a ``LlamaForCausalLM``
    (run by ``generate.TorchForward``) or another runtime's ``Forward``."""

    def __init__(
        self,
        model: LlamaForCausalLM | Forward[Any],
        config: EngineConfig | None = None,
        *,
        eos_token_ids: Collection[int] = (),
        pad_token_id: int = 0,
        decode: Decoder | None = None,
        constrain: Constrain | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.forward: Forward[Any] = (
            generate.TorchForward(model, pad_token_id)
            if isinstance(model, LlamaForCausalLM)
            else model
        )
        self._constrain = constrain
        self.config = config or EngineConfig()
        self.context_window = self.forward.context_window
        self._eos = frozenset(eos_token_ids)
        self._decode = decode
        self._clock = clock
        self._ids = itertools.count(1)
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # row i of self._batch is self._running[i]
        self._batch: BatchState | None = None
        self._step_s = 0.0  # smoothed duration of a step (0 until one ran)

    def reset(self) -> list[str]:
        """Drop every waiting and running request (after a failed step, when the batch's
        state is unknown); returns their ids. The model's weights stay loaded."""
        dropped = [seq.request_id for seq in itertools.chain(self._running, self._waiting)]
        self._waiting.clear()
        self._running = []
        self._batch = None
        self.forward.reset()
        return dropped

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams | None = None,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a request; it joins the running batch at the next step that has room."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_ids]
        if request_id is not None and request_id in self._active_ids():
            raise InvalidRequestError(f"request {request_id!r} is already in the engine")
        if not prompt:
            raise InvalidRequestError("the prompt has no tokens")
        if len(prompt) >= self.context_window:
            raise PromptTooLongError(len(prompt), self.context_window)
        seq = _Sequence(
            request_id=request_id or f"req-{next(self._ids)}",
            prompt=prompt,
            params=params,
            max_tokens=min(params.max_tokens, self.context_window - len(prompt)),
            deadline=deadline,
            submitted_at=self._clock(),
            generator=make_generator(params),
            constraint=self._constraint(params),
        )
        if seq.reserved_tokens > self.config.max_batch_tokens:
            raise RequestTooLargeError(
                f"prompt ({len(prompt)}) + max_tokens ({seq.max_tokens}) tokens exceed the "
                f"batch token budget ({self.config.max_batch_tokens})"
            )
        self._waiting.append(seq)
        return seq.request_id

    def _constraint(self, params: SamplingParams) -> TokenConstraint | None:
        if params.grammar is None:
            return None
        if self._constrain is None:
            raise InvalidRequestError("this engine cannot hold answers to a grammar")
        return self._constrain(params.grammar)

    def step(self) -> list[GenerationResult]:
        """One decode step for the running batch plus admission; the requests it finished."""
        done: list[_Sequence] = []
        started = self._clock()
        self._expire(started)
        self._retire(done)
        admitted = self._admit()
        prompts = [s.prompt for s in admitted]
        decoded = self._batch is not None
        fresh: BatchState | None = None
        if admitted and self._batch is not None and self.forward.fused:
            logits, fresh, fresh_logits = self.forward.decode_and_prefill(self._batch, prompts)
            self._accept(admitted, fresh_logits, fresh)
            self._accept(self._running, logits, self._batch)
        else:
            if admitted:  # first: a new request's first token does not wait for the decode
                fresh, fresh_logits = self.forward.prefill(prompts)
                self._accept(admitted, fresh_logits, fresh)
            if self._batch is not None:
                logits = self.forward.decode(self._batch)  # (B, vocab)
                self._accept(self._running, logits, self._batch)
        if fresh is not None:
            self._running.extend(admitted)
            self._batch = fresh if self._batch is None else self.forward.merge(self._batch, fresh)
        self._retire(done)
        if fresh is not None or decoded:
            elapsed = self._clock() - started
            alpha = self.config.step_time_smoothing
            self._step_s = alpha * elapsed + (1 - alpha) * self._step_s if self._step_s else elapsed
        return [self._result(seq) for seq in done]

    def partial_texts(self, request_ids: Collection[str]) -> dict[str, str]:
        """For each of ``request_ids`` the engine still holds: the text of its answer so
        far that a client may already be shown. That is the decoding of its tokens,
        without a trailing incomplete character (U+FFFD) and without a tail that may yet
        become the start of a stop string, so it is a prefix of the final ``text``.
        Empty without a decoder."""
        wanted = set(request_ids)
        if self._decode is None or not wanted:
            return {}
        return {
            seq.request_id: self._shown_text(seq)
            for seq in itertools.chain(self._running, self._waiting)
            if seq.request_id in wanted
        }

    def run(self) -> list[GenerationResult]:
        """Step until every submitted request has finished; results in finishing order."""
        results: list[GenerationResult] = []
        while self.has_work:
            results.extend(self.step())
        return results

    def _active_ids(self) -> set[str]:
        return {seq.request_id for seq in itertools.chain(self._running, self._waiting)}

    def _expire(self, now: float) -> None:
        """Mark the requests whose deadline falls before the next step would end."""
        for seq in itertools.chain(self._running, self._waiting):
            if seq.deadline is not None and now + self._step_s >= seq.deadline:
                seq.finish_reason = "deadline"

    def _accept(self, seqs: list[_Sequence], logits: torch.Tensor, batch: BatchState) -> None:
        """Choose each row's next token, record it, and check its stop conditions."""
        params = [s.params for s in seqs]
        logits = penalise(logits, params, [s.tokens for s in seqs])
        tokens = choose(_masked(logits, seqs), params, [s.generator for s in seqs])
        batch.next_ids = torch.tensor(tokens, dtype=torch.long, device=batch.next_ids.device)
        now = self._clock()
        for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if seq.params.logprobs is not None and token not in self._eos:
                seq.logprobs.append(logprob_of(logits[row], token, seq.params.logprobs))
            if seq.constraint is not None:
                seq.constraint.accept(token)
            self._append(seq, token, now)

    def _append(self, seq: _Sequence, token: int, now: float) -> None:
        if seq.first_token_at is None:
            seq.first_token_at = now
        seq.tokens.append(token)
        if token in self._eos:
            seq.finish_reason = "stop"
        elif seq.params.stop and self._decode is not None:
            text = self._decoded(seq)
            cuts = [i for i in (text.find(s) for s in seq.params.stop) if i >= 0]
            if cuts:
                seq.text = text[: min(cuts)]
                seq.finish_reason = "stop"
        if seq.finish_reason is None and len(seq.tokens) >= seq.max_tokens:
            seq.finish_reason = "length"

    def _retire(self, done: list[_Sequence]) -> None:
        """Move finished requests to ``done``; drop their rows from the batch."""
        for seq in [s for s in self._waiting if s.finish_reason is not None]:
            self._waiting.remove(seq)
            done.append(seq)
        keep = [row for row, seq in enumerate(self._running) if seq.finish_reason is None]
        if len(keep) == len(self._running):
            return
        done.extend(seq for seq in self._running if seq.finish_reason is not None)
        self._running = [self._running[row] for row in keep]
        if self._batch is not None:
            self._batch = self.forward.select(self._batch, keep)

    def _admit(self) -> list[_Sequence]:
        """The waiting requests that fit, taken from the queue (first come, first served)."""
        reserved = sum(seq.reserved_tokens for seq in self._running)
        admitted: list[_Sequence] = []
        while self._waiting and len(self._running) + len(admitted) < self.config.max_batch_size:
            head = self._waiting[0]
            if reserved + head.reserved_tokens > self.config.max_batch_tokens:
                break
            reserved += head.reserved_tokens
            admitted.append(self._waiting.popleft())
        now = self._clock()
        for seq in admitted:
            seq.admitted_at = now
        return admitted

    def _decoded(self, seq: _Sequence) -> str:
        """The decoding of ``seq``'s tokens so far, decoded once per new token (the stop
        check, the streamed partial text and the result share it)."""
        assert self._decode is not None
        if seq.decoded[0] != len(seq.tokens):
            seq.decoded = (len(seq.tokens), self._decode(seq.tokens))
        return seq.decoded[1]

    def _shown_text(self, seq: _Sequence) -> str:
        if seq.text is not None:  # cut before a stop string: final
            return seq.text
        text = self._decoded(seq).rstrip("\ufffd")
        held = max(
            (k for stop in seq.params.stop for k in range(1, len(stop)) if text.endswith(stop[:k])),
            default=0,
        )
        return text[: len(text) - held]

    def _result(self, seq: _Sequence) -> GenerationResult:
        finished = self._clock()
        text = seq.text
        if text is None:
            text = self._decoded(seq) if self._decode is not None else ""
        active = finished - seq.admitted_at if seq.admitted_at is not None else 0.0
        return GenerationResult(
            request_id=seq.request_id,
            text=text,
            token_ids=tuple(seq.tokens),
            finish_reason=seq.finish_reason or "length",
            prompt_tokens=len(seq.prompt),
            completion_tokens=len(seq.tokens),
            ttft_s=None if seq.first_token_at is None else seq.first_token_at - seq.submitted_at,
            duration_s=finished - seq.submitted_at,
            tokens_per_s=len(seq.tokens) / active if active > 0 else 0.0,
            logprobs=tuple(seq.logprobs) if seq.params.logprobs is not None else None,
        )


def _masked(logits: torch.Tensor, seqs: Sequence[_Sequence]) -> torch.Tensor:
    """``logits`` (B, vocab) with each constrained row masked to what its grammar allows
    next (log-probabilities are reported from the unmasked rows)."""
    rows = [row for row, seq in enumerate(seqs) if seq.constraint is not None]
    if not rows:
        return logits
    out = logits.float().clone()
    for row in rows:
        constraint = seqs[row].constraint
        assert constraint is not None
        seq = seqs[row]
        out[row] = constraint.mask(logits[row], seq.max_tokens - len(seq.tokens))
    return out

"""What the batching engine needs from a model runtime: forward passes over a running
batch whose per-sequence state (its KV cache) stays in the runtime between steps.

Two runtimes implement it: ``models.llama.generate.TorchForward`` (transformers, a
left-padded batch) and ``models.llama.cpp.LlamaCppForward`` (llama.cpp through
llama-cpp-python, one KV-cache sequence per request). The engine keeps everything
else (admission, sampling, penalties, grammars, log-probabilities, stop strings,
deadlines) on the logits the runtime returns, so every runtime honours the same
request parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import torch


class BatchState(Protocol):
    """A runtime's running batch: row i is the engine's i-th running request."""

    next_ids: torch.Tensor
    """(B,) long: each row's last chosen token, not yet fed to the model."""


State = TypeVar("State", bound=BatchState)


class Forward(Protocol[State]):
    """Forward passes of one model over the engine's running batch."""

    context_window: int
    """The most tokens (prompt + completion) one sequence may hold."""
    fused: bool
    """True when ``decode_and_prefill`` runs the running batch's next tokens and the
    new prompts in one forward pass (the engine then uses it when both are present)."""

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[State, torch.Tensor]:
        """Run new prompts; their state and last-position logits (B, vocab)."""
        ...

    def decode(self, state: State) -> torch.Tensor:
        """Feed each row's ``next_ids``; logits (B, vocab)."""
        ...

    def decode_and_prefill(
        self, state: State, prompts: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """``decode(state)`` and ``prefill(prompts)`` as one pass: (the running rows'
        logits, the new prompts' state, their logits)."""
        ...

    def merge(self, a: State, b: State) -> State:
        """Rows of ``a`` then rows of ``b``."""
        ...

    def select(self, state: State, rows: Sequence[int]) -> State | None:
        """Keep ``rows`` in that order and release the others; None when none is kept."""
        ...

    def reset(self) -> None:
        """Release every sequence (after a failed step, when the state is unknown)."""
        ...

    @property
    def tokens_reused(self) -> int:
        """Prompt tokens taken from a cache instead of computed, so far (0: no cache)."""
        ...

    def close(self) -> None:
        """Free what the runtime holds outside Python."""
        ...

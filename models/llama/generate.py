"""Forward passes over a left-padded batch that keeps its KV cache between steps.

Every row of a ``PaddedBatch`` is one sequence, right-aligned: padding sits on the
left of the cache and is masked out, and each row's position ids count only its own
tokens, so a row computes what it would compute alone (up to float rounding). Rows
join (``merge``: the shorter cache is left-padded with zeros) and leave (``select``:
columns that became padding in every row are trimmed) between steps, which is what
continuous batching needs from the model. This module is the only one that touches
the cache's layout.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import pad
from transformers import DynamicCache, LlamaForCausalLM

# transformers 5.x renamed the forward argument `past_key_values` to `cache`.
_CACHE_ARG = (
    "cache"
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    else "past_key_values"
)


@dataclass
class PaddedBatch:
    """The running state of B sequences whose caches hold T columns."""

    cache: DynamicCache  # per layer: keys, values (B, n_kv_heads, T, head_dim)
    mask: torch.Tensor  # (B, T) long: 1 where the cache holds a real token
    positions: torch.Tensor  # (B,) long: position id of next_ids = real tokens cached
    next_ids: torch.Tensor  # (B,) long: the last sampled token, not yet in the cache

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])


def _forward(model: LlamaForCausalLM, **inputs: Any) -> torch.Tensor:
    """Last-position logits (B, vocab) of one forward pass that extends the cache."""
    cache = inputs.pop("cache")
    out = model(**inputs, **{_CACHE_ARG: cache}, use_cache=True, logits_to_keep=1)
    logits: torch.Tensor = out.logits  # (B, 1, vocab)
    return logits[:, -1, :].float()


@torch.inference_mode()
def prefill(
    model: LlamaForCausalLM, prompts: Sequence[Sequence[int]], pad_id: int
) -> tuple[PaddedBatch, torch.Tensor]:
    """Run the prompts, left-padded to a common length; their logits (B, vocab)."""
    device = model.device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, L)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): 0 on padding and first token
    cache = DynamicCache()
    logits = _forward(
        model, input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache
    )
    lengths = mask.sum(-1)  # (B,)
    batch = PaddedBatch(cache, mask, lengths, torch.zeros_like(lengths))
    return batch, logits


@torch.inference_mode()
def decode(model: LlamaForCausalLM, batch: PaddedBatch) -> torch.Tensor:
    """Feed each row's ``next_ids``: the cache grows by one column; logits (B, vocab)."""
    ones = torch.ones((batch.size, 1), dtype=batch.mask.dtype, device=batch.mask.device)
    mask = torch.cat([batch.mask, ones], dim=1)  # (B, T + 1)
    logits = _forward(
        model,
        input_ids=batch.next_ids[:, None],  # (B, 1)
        attention_mask=mask,
        position_ids=batch.positions[:, None],  # (B, 1)
        cache=batch.cache,
    )
    batch.mask = mask
    batch.positions = batch.positions + 1
    return logits


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values), each (B, n_kv_heads, T, head_dim)."""
    return [(entry[0], entry[1]) for entry in cache]


def _pad_left(x: torch.Tensor, length: int, dim_from_end: int) -> torch.Tensor:
    """Zero-pad dimension ``-dim_from_end`` of ``x`` on the left up to ``length``."""
    missing = length - x.shape[-dim_from_end]
    if missing == 0:
        return x
    return pad(x, [0, 0] * (dim_from_end - 1) + [missing, 0])


@torch.inference_mode()
def merge(a: PaddedBatch, b: PaddedBatch) -> PaddedBatch:
    """Rows of ``a`` then rows of ``b``, aligned on the right (B_a + B_b rows)."""
    width = max(a.length, b.length)
    layers = [
        (
            torch.cat([_pad_left(ka, width, 2), _pad_left(kb, width, 2)]),
            torch.cat([_pad_left(va, width, 2), _pad_left(vb, width, 2)]),
        )
        for (ka, va), (kb, vb) in zip(_layers(a.cache), _layers(b.cache), strict=True)
    ]
    return PaddedBatch(
        cache=DynamicCache(layers),
        mask=torch.cat([_pad_left(a.mask, width, 1), _pad_left(b.mask, width, 1)]),
        positions=torch.cat([a.positions, b.positions]),
        next_ids=torch.cat([a.next_ids, b.next_ids]),
    )


@torch.inference_mode()
def select(batch: PaddedBatch, rows: Sequence[int]) -> PaddedBatch:
    """Keep ``rows`` (in that order); drop the cache columns that are padding in all."""
    index = torch.tensor(list(rows), dtype=torch.long, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)  # (B', T)
    used = mask.any(dim=0).nonzero()
    start = int(used[0, 0]) if used.numel() else mask.shape[1]
    layers = [
        (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
        for k, v in _layers(batch.cache)
    ]
    return PaddedBatch(
        cache=DynamicCache(layers),
        mask=mask[:, start:],
        positions=batch.positions.index_select(0, index),
        next_ids=batch.next_ids.index_select(0, index),
    )


class TorchForward:
    """The ``models.llama.forward.Forward`` of a transformers ``LlamaForCausalLM``:
    a left-padded ``PaddedBatch`` (prefill and decode are separate passes)."""

    fused = False

    def __init__(self, model: LlamaForCausalLM, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.context_window = int(model.config.max_position_embeddings)

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[PaddedBatch, torch.Tensor]:
        return prefill(self.model, prompts, self.pad_id)

    def decode(self, state: PaddedBatch) -> torch.Tensor:
        return decode(self.model, state)

    def decode_and_prefill(
        self, state: PaddedBatch, prompts: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, PaddedBatch, torch.Tensor]:
        logits = self.decode(state)
        fresh, fresh_logits = self.prefill(prompts)
        return logits, fresh, fresh_logits

    def merge(self, a: PaddedBatch, b: PaddedBatch) -> PaddedBatch:
        return merge(a, b)

    def select(self, state: PaddedBatch, rows: Sequence[int]) -> PaddedBatch | None:
        return select(state, rows) if rows else None

    def reset(self) -> None:
        """Nothing to release: a ``PaddedBatch`` owns its cache."""

    tokens_reused = 0  # no prompt cache

    def close(self) -> None:
        """Nothing held outside Python."""

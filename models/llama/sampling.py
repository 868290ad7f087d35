"""Next-token choice per row: greedy, or temperature + nucleus (top-p) sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.llama.config import SamplingParams


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A CPU generator for a sampled request (seeded when ``seed`` is set); None if greedy."""
    if params.greedy:
        return None
    generator = torch.Generator()
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


@torch.inference_mode()
def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from ``logits`` (vocab,) at ``params.temperature`` within ``params.top_p``."""
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)  # (vocab,)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)  # (vocab,)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly likelier tokens
        sorted_probs[before >= params.top_p] = 0  # the first token always stays
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@torch.inference_mode()
def choose(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """The next token of each row of ``logits`` (B, vocab)."""
    tokens: list[int] = logits.argmax(dim=-1).tolist()  # (B,) greedy choice for every row
    for row, (p, g) in enumerate(zip(params, generators, strict=True)):
        if g is not None:
            tokens[row] = sample_row(logits[row], p, g)
    return tokens

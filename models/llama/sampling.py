"""Next-token choice per row: greedy, or temperature + nucleus (top-p) sampling, after
the repetition penalties; and the chosen tokens' log-probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@torch.inference_mode()
def penalise(
    logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[Sequence[int]]
) -> torch.Tensor:
    """``logits`` (B, vocab) with each penalised row lowered by its completion so far:
    ``count * frequency_penalty + (count > 0) * presence_penalty``; the same tensor
    when no row asks for a penalty."""
    rows = [r for r, p in enumerate(params) if p.penalised and histories[r]]
    if not rows:
        return logits
    out = logits.float().clone()
    vocab = out.shape[-1]
    for row in rows:
        p = params[row]
        counts = torch.bincount(torch.tensor(histories[row]), minlength=vocab)[:vocab].float()
        out[row] -= counts * p.frequency_penalty + (counts > 0).float() * p.presence_penalty
    return out


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the ``k`` likeliest tokens' (id, logprob)
    at its position, from the (penalised) logits before temperature and top-p."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@torch.inference_mode()
def logprob_of(logits: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """The log-probability of ``token`` under ``logits`` (vocab,) and the top ``k``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    pairs: tuple[tuple[int, float], ...] = ()
    if k:
        top = logp.topk(k)
        pairs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    return TokenLogprob(token_id=token, logprob=float(logp[token]), top=pairs)

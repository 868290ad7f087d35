"""How far a runtime's greedy answers follow the float32 engine's on the same prompts:
answers equal token for token, and the mean number of leading tokens that agree. A
runtime that computes in lower precision (4- or 8-bit weights and activations,
bfloat16) drifts from float32 after some tokens; bench.llm_throughput prints this next
to each runtime's speed so a faster setting is never read without its cost."""

from __future__ import annotations

import statistics
from typing import Any

from models.llama import ChatModel, ChatParams

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "Translate 'good morning' to French.",
    "What is 12 times 7?",
]


def answers(chat: ChatModel, prompts: list[str], max_tokens: int) -> list[tuple[int, ...]]:
    """Greedy token ids of each prompt's answer, all submitted at once."""
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    results = chat.generate(conversations, ChatParams(max_tokens=max_tokens))  # type: ignore[arg-type]
    return [r.token_ids for r in results]


def agreement(reference: list[tuple[int, ...]], candidate: list[tuple[int, ...]]) -> dict[str, Any]:
    """Equal answers and the mean agreeing prefix (tokens) of ``candidate`` against
    ``reference``, prompt by prompt."""
    prefixes = []
    for ref, got in zip(reference, candidate, strict=True):
        n = 0
        for a, b in zip(ref, got, strict=False):
            if a != b:
                break
            n += 1
        prefixes.append(n)
    return {
        "answers": len(reference),
        "equal_answers": sum(a == b for a, b in zip(reference, candidate, strict=True)),
        "mean_agreeing_prefix": statistics.mean(prefixes),
        "mean_reference_tokens": statistics.mean(len(r) for r in reference),
    }


def describe(result: dict[str, Any]) -> str:
    return (
        f"answers equal to float32: {result['equal_answers']}/{result['answers']}, agreeing "
        f"prefix {result['mean_agreeing_prefix']:.1f} of {result['mean_reference_tokens']:.1f} "
        "tokens"
    )

"""Constrained decoding: a request's answer held to JSON (any object, or one valid for a
JSON schema) by xgrammar's token masks, one matcher per request.

xgrammar was chosen over outlines and lm-format-enforcer: it compiles a schema once
per tokenizer into a token-mask automaton (bench.structured_output: constrained
batches ran at 0.87-0.94x the unconstrained tokens/s), has CPU wheels on PyPI,
and is what vLLM and SGLang use by default; outlines pulls in a larger stack and
lm-format-enforcer walks a token trie in Python at every step. Whitespace between JSON
tokens is not free (``any_whitespace=False``): a small model can otherwise spend its
whole budget on blank lines inside a valid document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from functools import lru_cache
from typing import Any

import torch
import xgrammar as xgr

from models.llama.config import GrammarSpec
from models.llama.errors import InvalidRequestError

MAX_DEPTH = 6


def _bounded_object() -> str:
    """JSON mode's grammar: any JSON object, within bounds that keep a small model's
    repetition loops (a string, a number or a nesting that never ends) from eating the
    whole token budget: keys of at most 64 characters, strings of at most 256, numbers
    within +-1e15, at most 16 items or properties per array or object, objects and
    arrays nested at most MAX_DEPTH deep."""
    scalars: list[object] = [
        {"type": "string", "maxLength": 256},
        {"type": "number", "minimum": -1e15, "maximum": 1e15},
        {"type": "boolean"},
        {"type": "null"},
    ]
    defs: dict[str, object] = {f"value{MAX_DEPTH + 1}": {"anyOf": scalars}}
    for level in range(1, MAX_DEPTH + 1):  # object1 is the document itself
        inner = {"$ref": f"#/$defs/value{level + 1}"}
        defs[f"object{level}"] = {
            "type": "object",
            "additionalProperties": inner,
            "maxProperties": 16,
            "propertyNames": {"maxLength": 64},
        }
        array = {"type": "array", "items": inner, "maxItems": 16}
        if level > 1:
            defs[f"value{level}"] = {"anyOf": [*scalars, {"$ref": f"#/$defs/object{level}"}, array]}
    return json.dumps({"$defs": defs, "$ref": "#/$defs/object1"})


JSON_OBJECT = _bounded_object()


CLOSING_RESERVE = 24
"""Tokens before the end of a request's budget at which its answer is steered to
close: from then on, among the tokens the grammar allows, those that end the open
string, then those that close objects and arrays, then short values (``0``, ``null``)
are preferred, so the document is whole when the budget ends."""
IN_STRING_CLOSERS = re.compile(r'^"[}\]:]*$')
CLOSERS = re.compile(r"^[}\]]+$")
SHORT_VALUES = re.compile(r"^(?:0|null)$")


class Vocabulary:
    """What constrained decoding needs to know of each token's text: which tokens end a
    string or close a structure, which hold a raw control character (never allowed: a
    JSON string may not contain one), and where the quotes are."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.texts = [
            str(tokenizer.decode([i])) if i < len(tokenizer) else "" for i in range(vocab_size)
        ]

        def marks(pattern: re.Pattern[str]) -> torch.Tensor:
            return torch.tensor([bool(pattern.match(t)) for t in self.texts], dtype=torch.bool)

        self.in_string_closers = marks(IN_STRING_CLOSERS)
        self.closers = marks(CLOSERS)
        self.short_values = marks(SHORT_VALUES)
        self.control = torch.tensor(
            [any(ord(c) < 0x20 for c in t) for t in self.texts], dtype=torch.bool
        )


class Constraint:
    """One request's place in its grammar: masks the next token's logits, then follows
    the token chosen (and whether the answer is inside a JSON string)."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab: Vocabulary) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, len(vocab.texts))
        self._vocab = vocab
        self._in_string = False
        self._escaped = False

    def mask(self, logits: torch.Tensor, remaining: int | None = None) -> torch.Tensor:
        """``logits`` (vocab,) as float32 with every token the grammar forbids at -inf;
        with ``remaining`` tokens or fewer than CLOSING_RESERVE left in the budget, only
        the likeliest tier of closing tokens the grammar allows stays."""
        row = logits.float().unsqueeze(0).clone()  # (1, vocab)
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(row, self._bitmask)
        vocab = self._vocab
        out = row[0].masked_fill(vocab.control[: row.shape[1]], float("-inf"))
        if remaining is None or remaining > CLOSING_RESERVE:
            return out
        allowed = torch.isfinite(out)
        tiers = (
            (vocab.in_string_closers,) if self._in_string else (vocab.closers, vocab.short_values)
        )
        for tier in tiers:
            chosen = allowed & tier[: out.shape[0]]
            if bool(chosen.any()):
                return out.masked_fill(~chosen, float("-inf"))
        return out

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise InvalidRequestError(f"token {token} does not fit the request's grammar")
        for char in self._vocab.texts[token] if token < len(self._vocab.texts) else "":
            if self._escaped:
                self._escaped = False
            elif self._in_string and char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = not self._in_string


class Grammars:
    """Compiles grammar specs for one tokenizer (cached) and hands out constraints."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Collection[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._vocab = Vocabulary(tokenizer, vocab_size)
        self._compile = lru_cache(maxsize=64)(self._compile_uncached)

    def constraint(self, spec: GrammarSpec) -> Constraint:
        """A fresh constraint for one request; ``InvalidRequestError`` for a schema
        xgrammar cannot use."""
        return Constraint(self._compile(spec), self._vocab)

    def _compile_uncached(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        schema = JSON_OBJECT if spec.schema is None else spec.schema
        try:
            json.loads(schema)
            return self._compiler.compile_json_schema(schema, any_whitespace=False)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise InvalidRequestError(f"the JSON schema cannot be used: {exc}") from None

"""Labelled queries for fitting and evaluation: CLINC150-style JSON lines.

One object a line, ``{"text": "...", "intent": "<intent or oos>"}``; the label ``oos``
marks an out-of-scope query. A split's hash identifies the exact texts and labels an
artifact was fitted or calibrated on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

OOS_LABEL = "oos"
CLINC150_DIR = Path(__file__).resolve().parent / "clinc150"
"""CLINC150's train and val splits as the repository ships them (CC BY 3.0, see the
LICENSE and README there): the default for ``make up``, the tests and the benchmarks."""


@dataclass(frozen=True)
class Split:
    """Texts and their intents, in file order."""

    texts: tuple[str, ...]
    intents: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.intents):
            raise ValueError(f"{len(self.texts)} texts but {len(self.intents)} intents")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, keep: list[bool], suffix: str) -> Split:
        pairs = [(t, i) for t, i, k in zip(self.texts, self.intents, keep, strict=True) if k]
        return Split(tuple(t for t, _ in pairs), tuple(i for _, i in pairs), f"{self.name}{suffix}")

    def in_scope(self) -> Split:
        return self.select([i != OOS_LABEL for i in self.intents], ":in")

    def out_of_scope(self) -> Split:
        return self.select([i == OOS_LABEL for i in self.intents], ":oos")

    def sha256(self) -> str:
        """A hash of the texts and intents (not of the file's bytes or its name)."""
        digest = hashlib.sha256()
        for text, intent in zip(self.texts, self.intents, strict=True):
            digest.update(json.dumps([text, intent]).encode() + b"\n")
        return digest.hexdigest()


def load_split(data_dir: str | Path, split: str) -> Split:
    """``<data_dir>/<split>.jsonl`` as a ``Split``; ValueError names a bad line."""
    path = Path(data_dir) / f"{split}.jsonl"
    texts: list[str] = []
    intents: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("text"), str) or not isinstance(row.get("intent"), str):
                raise ValueError(f"{path}:{number}: expected string fields 'text' and 'intent'")
            texts.append(row["text"])
            intents.append(row["intent"])
    return Split(tuple(texts), tuple(intents), split)

"""The lexicon model: vocabulary coverage of a text."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

VOCAB_FILE = Path(__file__).with_name("vocab.txt")
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lowercase word tokens (letters, digits, apostrophes)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Lexicon:
    """A fixed vocabulary; ``coverage`` is the share of a text's words in it."""

    vocabulary: frozenset[str]
    version: str

    @classmethod
    def load(cls, path: Path = VOCAB_FILE) -> Lexicon:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0] if lines else ""
        entries = [w for w in lines[1:] if w and not w.startswith("#")]
        if not header.startswith("# lexicon "):
            raise ValueError(f"{path} is not a lexicon file (no '# lexicon <version>' header)")
        if not entries:
            raise ValueError(f"{path} has no words")
        return cls(frozenset(entries), header.removeprefix("# lexicon ").strip())

    def coverage(self, text: str) -> tuple[float, int]:
        """(share of words in the vocabulary, word count); (0.0, 0) without words."""
        tokens = words(text)
        if not tokens:
            return 0.0, 0
        return sum(t in self.vocabulary for t in tokens) / len(tokens), len(tokens)


def build_vocabulary(texts: Iterable[str], size: int) -> list[str]:
    """The ``size`` most frequent words (ties by the word itself, for a stable file)."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in words(text):
            counts[word] = counts.get(word, 0) + 1
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]

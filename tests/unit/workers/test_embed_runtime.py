"""The ``embed`` runtime with the real all-MiniLM-L6-v2 weights: its vectors are the
model's sentence embeddings (checked against plain transformers mean pooling) and the
last-layer part of the OOD detector's own features; bad or too long inputs fail alone."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from models.ood.embed import load_encoder
from models.ood.encoding import EncoderConfig, bundled_model_dir
from services.common.embeddings import EmbeddingOutput
from services.workers.embed_runtime import EmbedRuntime
from services.workers.runtime import PredictionError

TEXTS = [
    "How do I reset my online banking password?",
    "what's the weather in Lisbon tomorrow",
    "Play some jazz",
    "Wie spät ist es?",
]


@pytest.fixture(scope="module")
def runtime() -> Iterator[EmbedRuntime]:
    model = EmbedRuntime({})
    model.load()
    yield model
    model.unload()


def reference(texts: list[str]) -> np.ndarray:
    """Mean pooling of the last layer, L2-normalised, written out with transformers."""
    folder = str(bundled_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_vectors_are_the_models_sentence_embeddings(runtime: EmbedRuntime) -> None:
    [out] = runtime.predict_batch([{"input": TEXTS}])
    got = EmbeddingOutput.model_validate(out)
    vectors = np.array(got.vectors)
    assert vectors.shape == (4, 384)
    assert cosines(vectors, reference(TEXTS)).min() >= 0.999
    assert got.prompt_tokens == sum(
        len(ids) for ids in runtime.encoder.tokenizer(TEXTS)["input_ids"]
    )


def test_vectors_match_the_detectors_own_encoder(runtime: EmbedRuntime) -> None:
    [out] = runtime.predict_batch([{"input": TEXTS}])
    features = load_encoder(EncoderConfig(layers=(2, 4, 6), num_threads=1)).encode(TEXTS)
    last_layer = features[:, -384:]  # the detector's features end with the last layer's part
    assert cosines(np.array(EmbeddingOutput.model_validate(out).vectors), last_layer).min() >= 0.999


def test_each_request_gets_its_own_vectors_in_order(runtime: EmbedRuntime) -> None:
    outs = runtime.predict_batch([{"input": TEXTS[:1]}, {"input": TEXTS[1:]}])
    together = EmbeddingOutput.model_validate(runtime.predict_batch([{"input": TEXTS}])[0])
    split = [v for o in outs for v in EmbeddingOutput.model_validate(o).vectors]
    assert np.allclose(np.array(split), np.array(together.vectors), atol=1e-5)


def test_a_bad_or_too_long_input_fails_alone(runtime: EmbedRuntime) -> None:
    long_text = "word " * 400
    bad, too_long, good = runtime.predict_batch(
        [{"messages": []}, {"input": ["short", long_text]}, {"input": ["fine"]}]
    )
    assert isinstance(bad, PredictionError)
    assert isinstance(too_long, PredictionError)
    assert too_long.code == "prompt_too_long"
    assert "input 1" in too_long.message
    assert len(EmbeddingOutput.model_validate(good).vectors) == 1

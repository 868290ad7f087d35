"""Embeddings through the whole stack: the official openai client -> gateway ->
Kafka -> the MiniLM embedding worker -> rendezvous -> vectors equal to the OOD
detector's own encoder on the same texts."""

from __future__ import annotations

import numpy as np
import openai

from models.ood.data import load_split
from models.ood.embed import load_encoder
from models.ood.encoding import EncoderConfig
from tests.integration.clinc import CLINC150
from tests.integration.stack import Launch, Worker, launch_stack_fixture  # noqa: F401

EMBEDDINGS = {
    "endpoint": "embeddings",
    "deadline_ms": 30_000,
    "models": ["minilm"],
    "stages": [{"until_ms": "deadline", "accept": ["minilm"]}],
}


def test_vectors_through_the_stack_equal_the_detectors_encoder(launch_stack: Launch) -> None:
    val = load_split(CLINC150, "val")
    texts = list(val.texts[::75][:40])  # in-scope and out-of-scope queries, many intents
    stack = launch_stack(
        policies=[EMBEDDINGS], workers=[Worker("minilm", "models/specs/minilm.yaml")]
    )
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        as_floats = client.embeddings.create(
            model="embeddings", input=texts, encoding_format="float"
        )
        as_base64 = client.embeddings.create(
            model="minilm", input=texts[:3]
        )  # the client's default
    finally:
        client.close()

    got = np.array([d.embedding for d in as_floats.data])
    assert got.shape == (40, 384)
    assert as_floats.model == "minilm"
    # the detector's features end with the last layer's part, which is these vectors
    detector = load_encoder(EncoderConfig(layers=(2, 4, 6), num_threads=1)).encode(texts)[:, -384:]
    cosine = (got * detector).sum(1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(detector, axis=1)
    )
    assert cosine.min() >= 0.999
    assert np.allclose(np.array([d.embedding for d in as_base64.data]), got[:3], atol=1e-6)
    assert as_floats.usage.prompt_tokens > 40

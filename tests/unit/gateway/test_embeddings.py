"""``POST /v1/embeddings`` over an in-memory bus, driven by the official ``openai``
client: texts go out as an embeddings payload on the endpoint's stream, vectors come
back in OpenAI's shape (floats or base64), and what is not served is refused by name."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from services.common.embeddings import EmbeddingOutput, EmbeddingPayload
from services.common.messages import RequestEnvelope
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, assert_refused, endpoint_settings, failed, ok


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    return endpoint_settings(tmp_path, "embeddings", ["minilm"])


def vectors_of(env: RequestEnvelope) -> list[bytes]:
    """A fake model: text i of length n gets the vector [n, i, 0.5]."""
    texts = EmbeddingPayload.model_validate(env.payload).input
    out = EmbeddingOutput(
        vectors=[[float(len(t)), float(i), 0.5] for i, t in enumerate(texts)],
        prompt_tokens=7 * len(texts),
    )
    return [ok(env, output=out.model_dump(), model="minilm")]


@pytest.fixture
def url(settings: GatewaySettings, bus: FakeBus, topics: Topics) -> Iterator[str]:
    bus.responder = vectors_of
    with serving(build_app(settings, bus=bus, topics=topics)) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_the_openai_client_gets_one_vector_per_text_in_order(
    client: openai.OpenAI, bus: FakeBus
) -> None:
    result = client.embeddings.create(
        model="embeddings", input=["a", "bbb"], encoding_format="float"
    )
    assert [d.embedding for d in result.data] == [[1.0, 0.0, 0.5], [3.0, 1.0, 0.5]]
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "minilm"
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (14, 14)
    [env] = bus.envelopes()
    assert env.endpoint == "embeddings"
    assert env.payload == {"input": ["a", "bbb"]}


def test_base64_is_little_endian_float32_and_the_client_decodes_it(
    client: openai.OpenAI, url: str
) -> None:
    raw = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "minilm", "input": "abcd", "encoding_format": "base64"},
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert struct.unpack("<3f", packed) == (4.0, 0.0, 0.5)
    # the openai client asks for base64 by default and decodes it
    assert client.embeddings.create(model="minilm", input="abcd").data[0].embedding == [
        4.0,
        0.0,
        0.5,
    ]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "x", "dimensions": 64}, 400, "dimensions"),
        ({"input": [1, 2, 3]}, 400, "input"),
        ({"input": [[1, 2], [3]]}, 400, "input"),
        ({"input": "x", "no_such": 1}, 400, "no_such"),
        ({"input": ""}, 422, None),
        ({"input": []}, 422, None),
        ({"input": ["x"] * 257}, 422, None),
        ({"input": "x", "encoding_format": "int8"}, 422, None),
    ],
)
def test_what_is_not_served_is_refused_and_nothing_is_produced(
    url: str, bus: FakeBus, body: dict[str, object], status: int, param: str | None
) -> None:
    resp = httpx.post(f"{url}/v1/embeddings", json={"model": "embeddings", **body})
    assert_refused(resp, bus, status, param)


def test_an_unknown_model_is_404(url: str) -> None:
    resp = httpx.post(f"{url}/v1/embeddings", json={"model": "ada-002", "input": "x"})
    assert resp.status_code == 404


def test_a_wrong_vector_count_or_shape_is_502(url: str, bus: FakeBus) -> None:
    bus.responder = lambda env: [ok(env, output={"vectors": [[1.0]], "prompt_tokens": 1})]
    resp = httpx.post(f"{url}/v1/embeddings", json={"model": "embeddings", "input": ["a", "b"]})
    assert resp.status_code == 502
    bus.responder = lambda env: [ok(env, output={"text": "hi"})]
    assert (
        httpx.post(f"{url}/v1/embeddings", json={"model": "embeddings", "input": "a"}).status_code
        == 502
    )


def test_a_model_refusing_a_too_long_input_is_400(url: str, bus: FakeBus) -> None:
    bus.responder = lambda env: [failed(env, "prompt_too_long")]
    resp = httpx.post(f"{url}/v1/embeddings", json={"model": "embeddings", "input": "a"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "prompt_too_long"

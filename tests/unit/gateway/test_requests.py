"""Client mistakes never reach Kafka and never get a 500: unknown endpoints, bodies
that are not valid requests, wrong content types, bodies over the limit."""

from __future__ import annotations

import httpx
import pytest

from tests.unit.gateway.fakes import FakeBus


def test_unknown_endpoint_is_404_and_nothing_is_produced(
    client: httpx.Client, bus: FakeBus
) -> None:
    resp = client.post("/v1/infer/nope", json={"inputs": 1})

    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "unknown_endpoint"
    assert "nope" in error["message"]
    assert "demo" in error["message"]
    assert bus.produced == []


BAD_BODIES = [
    b"garbage",
    b"",
    b"[]",
    b'"inputs"',
    b"{",
    b"\xff\xfe\x00",
    b'{"deadline_ms": 100}',
    b'{"inputs": 1, "deadline_ms": 0}',
    b'{"inputs": 1, "deadline_ms": -5}',
    b'{"inputs": 1, "deadline_ms": 1.5}',
    b'{"inputs": 1, "deadline_ms": "100"}',
    b'{"inputs": 1, "deadline_ms": true}',
    b'{"inputs": 1, "deadline_ms": null, "extra": 1}',
    b'{"inputs": NaN}',
    b'{"inputs": [1, Infinity]}',
    b'{"inputs": 1, "attributes": {"user": 7}}',
    b'{"inputs": 1, "attributes": ["user"]}',
    b'{"inputs": 1, "attributes": {"": "empty key"}}',
    (
        '{"inputs": 1, "attributes": {' + ", ".join(f'"k{i}": "v"' for i in range(33)) + "}}"
    ).encode(),
    b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}",
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_invalid_bodies_are_422_and_never_produced(
    client: httpx.Client, bus: FakeBus, body: bytes
) -> None:
    resp = client.post("/v1/infer/demo", content=body, headers={"content-type": "application/json"})

    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_request"
    assert resp.json()["error"]["message"]
    assert bus.produced == []


def test_body_without_content_type_is_read_as_json(client: httpx.Client, bus: FakeBus) -> None:
    resp = client.post("/v1/infer/demo", content=b'{"inputs": 3}')

    assert resp.status_code == 200
    assert bus.envelopes()[0].payload == 3


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client: httpx.Client, bus: FakeBus, ctype: str) -> None:
    resp = client.post("/v1/infer/demo", content=b'{"inputs": 1}', headers={"content-type": ctype})

    assert resp.status_code == 415
    assert resp.json()["error"]["code"] == "unsupported_media_type"
    assert bus.produced == []


def test_huge_bodies_are_413_by_length_and_by_stream(client: httpx.Client, bus: FakeBus) -> None:
    big = b'{"inputs": "' + b"x" * 10_000 + b'"}'

    declared = client.post(
        "/v1/infer/demo", content=big, headers={"content-type": "application/json"}
    )
    streamed = client.post("/v1/infer/demo", content=iter([big[:3000], big[3000:]]))

    assert "content-length" not in streamed.request.headers
    for resp in (declared, streamed):
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "body_too_large"
    assert bus.produced == []


def test_http_problems_use_the_error_body(client: httpx.Client) -> None:
    missing = client.get("/nowhere")
    wrong_method = client.get("/v1/infer/demo")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers["allow"]

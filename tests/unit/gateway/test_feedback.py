"""``POST /v1/feedback``: valid feedback lands on the feedback topic once Kafka has it;
bad bodies are 422 and produce nothing; an unreachable or refusing Kafka is 503."""

from __future__ import annotations

import httpx
import pytest

from services.common.codec import decode
from services.common.messages import Feedback
from services.common.topics import Topics
from tests.unit.gateway.fakes import FakeBus, metric


def test_feedback_is_produced_keyed_by_request_id(
    client: httpx.Client, bus: FakeBus, topics: Topics
) -> None:
    before = metric("rdv_gateway_feedback_total", status="202")
    resp = client.post("/v1/feedback", json={"request_id": "abc-1", "reward": 1, "label": "up"})
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"request_id": "abc-1", "reward": 1.0, "status": "accepted"}
    [out] = bus.produced
    assert out.topic == topics.feedback
    assert out.key == b"abc-1"
    msg = decode(out.value, Feedback)
    assert (msg.request_id, msg.reward, msg.label) == ("abc-1", 1.0, "up")
    assert msg.received_ms > 0
    assert metric("rdv_gateway_feedback_total", status="202") == before + 1


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"request_id": "abc"}',
        b'{"reward": 1}',
        b'{"request_id": "a b", "reward": 1}',
        b'{"request_id": "abc", "reward": "good"}',
        b'{"request_id": "abc", "reward": NaN}',
        b'{"request_id": "abc", "reward": 1e9}',
        b'{"request_id": "abc", "reward": 1, "extra": true}',
        b"[1]",
    ],
)
def test_bad_feedback_is_422_and_not_produced(
    client: httpx.Client, bus: FakeBus, body: bytes
) -> None:
    resp = client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_request"
    assert bus.produced == []


def test_kafka_down_or_refusing_is_503(client: httpx.Client, bus: FakeBus) -> None:
    bus.delivery_error = "broker refused"
    refused = client.post("/v1/feedback", json={"request_id": "x", "reward": 0})
    bus.delivery_error, bus.is_ready = None, False
    down = client.post("/v1/feedback", json={"request_id": "x", "reward": 0})
    assert refused.status_code == 503
    assert "broker refused" in refused.json()["error"]["message"]
    assert down.status_code == 503
    assert "Retry-After" in down.headers

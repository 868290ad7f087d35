"""The gateway's pending map is bounded by bytes: a request that would pass the bound
gets 503 with Retry-After, and the bytes held come back when requests finish."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.errors import OverloadedError
from services.gateway.pending import PendingReplies
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, ok, running


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("rdv_gateway_pending_bytes")


def test_entries_past_the_byte_bound_are_refused_and_bytes_come_back() -> None:
    async def scenario() -> None:
        pending = PendingReplies(max_bytes=1000)
        pending.bind(asyncio.get_running_loop())
        pending.open("a", 600)
        pending.open_stream("b", 400)
        assert pending.held_bytes == 1000
        assert _gauge() == 1000
        with pytest.raises(OverloadedError, match="1000 bytes are waiting"):
            pending.open("c", 1)
        assert len(pending) == 2  # the refused one was not opened
        pending.close("a")
        pending.open("c", 500)
        pending.cancel_all()
        assert pending.held_bytes == 0
        assert _gauge() == 0

    asyncio.run(scenario())


def test_a_zero_byte_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PendingReplies(max_bytes=0)


def test_the_http_edge_answers_503_with_retry_after_when_the_bytes_are_spent(
    settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    small = settings.model_copy(update={"max_pending_bytes": 600})
    bus.responder = lambda env: [ok(env, output="fine")]
    with running(build_app(small, bus=bus, topics=topics)) as client:
        fits = client.post("/v1/infer/demo", json={"inputs": "x"})
        too_big = client.post("/v1/infer/demo", json={"inputs": "y" * 1000})
    assert fits.status_code == 200
    assert too_big.status_code == 503
    assert too_big.headers["Retry-After"] == "1"
    assert too_big.json()["error"]["code"] == "overloaded"
    assert len(bus.envelopes()) == 1  # the refused request never reached Kafka

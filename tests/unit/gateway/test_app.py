"""The gateway app over an in-memory bus: answers, deadlines, errors from the streams,
load shedding, readiness and metrics, without a broker."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest

from services.common.codec import encode
from services.common.errors import ConfigError
from services.common.messages import Reply
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.overload import LoopLag
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, failed, metric, ok


def test_answers_with_the_reply_and_headers(
    client: httpx.Client, bus: FakeBus, topics: Topics
) -> None:
    bus.responder = lambda env: [ok(env, output={"echo": env.payload})]
    before = metric("rdv_gateway_requests_total", endpoint="demo", status="200")

    resp = client.post("/v1/infer/demo", json={"inputs": [1, 2], "attributes": {"user": "u7"}})

    assert resp.status_code == 200
    body = resp.json()
    [env] = bus.envelopes()
    assert body["request_id"] == env.request_id == resp.headers["x-rdv-request-id"]
    assert (body["model"], body["reason"], body["output"]) == (
        "champ",
        "champion",
        {"echo": [1, 2]},
    )
    assert body["latency_ms"] >= 0
    assert resp.headers["x-rdv-model"] == "champ"
    assert resp.headers["x-rdv-reason"] == "champion"
    [out] = bus.produced
    assert (out.topic, out.key) == (topics.requests, env.request_id.encode())
    assert len(env.request_id) == 32
    assert (env.return_address.topic, env.return_address.partition) == (topics.replies, 2)
    assert env.deadline_epoch_ms - env.created_ms == 500
    assert abs(env.created_ms - time.time() * 1000) < 5000
    assert env.attributes == {"user": "u7"}
    assert env.trace_id == env.request_id
    assert metric("rdv_gateway_requests_total", endpoint="demo", status="200") == before + 1


@pytest.mark.parametrize(("asked", "expected"), [(120, 120), (500, 500), (10_000, 500)])
def test_deadline_may_be_lowered_never_raised(
    client: httpx.Client, bus: FakeBus, asked: int, expected: int
) -> None:
    resp = client.post("/v1/infer/demo", json={"inputs": None, "deadline_ms": asked})

    assert resp.status_code == 200
    [env] = bus.envelopes()
    assert env.deadline_epoch_ms - env.created_ms == expected


def test_trace_id_comes_from_traceparent_or_request_id(client: httpx.Client, bus: FakeBus) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    client.post(
        "/v1/infer/demo",
        json={"inputs": 1},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    client.post("/v1/infer/demo", json={"inputs": 1}, headers={"x-request-id": "abc-123"})
    client.post("/v1/infer/demo", json={"inputs": 1}, headers={"x-request-id": "bad id\t!"})

    first, second, third = bus.envelopes()
    assert first.trace_id == trace
    assert second.trace_id == "abc-123"
    assert third.trace_id == third.request_id


@pytest.mark.parametrize(("code", "status"), [("deadline_exceeded", 504), ("all_failed", 502)])
def test_error_replies_map_to_gateway_statuses(
    client: httpx.Client, bus: FakeBus, code: str, status: int
) -> None:
    bus.responder = lambda env: [failed(env, code)]

    resp = client.post("/v1/infer/demo", json={"inputs": 1})

    assert resp.status_code == status
    assert resp.json() == {"error": {"code": code, "message": f"it was {code}"}}
    assert resp.headers["x-rdv-request-id"] == bus.envelopes()[0].request_id
    assert resp.headers["x-rdv-reason"] == "default"


def test_no_reply_is_504_right_after_deadline_and_grace(client: httpx.Client, bus: FakeBus) -> None:
    bus.responder = lambda env: []

    started = time.monotonic()
    resp = client.post("/v1/infer/demo", json={"inputs": 1, "deadline_ms": 80})
    took_ms = (time.monotonic() - started) * 1000

    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "no_answer"
    assert "deadline" in resp.json()["error"]["message"]
    assert resp.headers["x-rdv-request-id"] == bus.envelopes()[0].request_id
    assert 80 <= took_ms < 80 + 30 + 100


def test_stray_replies_are_counted_and_dropped(client: httpx.Client, bus: FakeBus) -> None:
    stray = Reply(request_id="not-ours", model="m", reason="r", output="WRONG", decided_ms=1.0)
    bus.responder = lambda env: [encode(stray), b"\x00junk", None, ok(env, "right"), ok(env, "2nd")]
    unknown = metric("rdv_gateway_dropped_replies_total", reason="unknown")
    junk = metric("rdv_gateway_dropped_replies_total", reason="undecodable")
    finished = metric("rdv_gateway_dropped_replies_total", reason="finished")

    resp = client.post("/v1/infer/demo", json={"inputs": 1})
    bus.reply(encode(stray.model_copy(update={"request_id": bus.envelopes()[0].request_id})))

    assert resp.status_code == 200
    assert resp.json()["output"] == "right"
    assert metric("rdv_gateway_dropped_replies_total", reason="unknown") == unknown + 1
    assert metric("rdv_gateway_dropped_replies_total", reason="undecodable") == junk + 2
    assert bus.dead_lettered == [b"\x00junk", None]
    # the duplicate, and the one after the request finished; the latter is handled on
    # the loop, so check it through a request that is served after it
    client.get("/healthz")
    assert metric("rdv_gateway_dropped_replies_total", reason="finished") == finished + 2


def test_backpressure_is_503_with_retry_after(client: httpx.Client, bus: FakeBus) -> None:
    bus.full = True

    resp = client.post("/v1/infer/demo", json={"inputs": 1})

    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "backpressure"
    assert metric("rdv_gateway_in_flight") == 0


def test_failed_delivery_is_503(client: httpx.Client, bus: FakeBus) -> None:
    bus.delivery_error = "_MSG_TIMED_OUT: Local: Message timed out"
    bus.responder = lambda env: []

    resp = client.post("/v1/infer/demo", json={"inputs": 1, "deadline_ms": 400})

    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "delivery_failed"
    assert "timed out" in resp.json()["error"]["message"]
    assert "retry-after" in resp.headers


def test_not_ready_is_503_and_readyz_follows(client: httpx.Client, bus: FakeBus) -> None:
    assert client.get("/readyz").status_code == 200
    bus.is_ready = False

    resp = client.post("/v1/infer/demo", json={"inputs": 1})
    ready = client.get("/readyz")

    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "kafka_unavailable"
    assert resp.headers["retry-after"] == "1"
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200
    assert bus.produced == []


def test_too_many_in_flight_is_503(settings: GatewaySettings, bus: FakeBus, topics: Topics) -> None:
    bus.responder = lambda env: []
    app = build_app(settings.model_copy(update={"max_in_flight": 1}), bus=bus, topics=topics)
    with (
        serving(app) as url,
        httpx.Client(base_url=url) as client,
        httpx.Client(base_url=url) as other,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(other.post, "/v1/infer/demo", json={"inputs": 1})
        assert bus.produced_event.wait(5)

        second = client.post("/v1/infer/demo", json={"inputs": 2})
        assert metric("rdv_gateway_in_flight") == 1
        bus.reply(ok(bus.envelopes()[0]))

        assert second.status_code == 503
        assert second.json()["error"]["code"] == "overloaded"
        assert first.result(timeout=5).status_code == 200
    assert len(bus.produced) == 1


def test_metrics_are_exposed(client: httpx.Client) -> None:
    client.post("/v1/infer/demo", json={"inputs": 1})
    client.post("/v1/infer/who", json={"inputs": 1})

    text = client.get("/metrics").text

    assert 'rdv_gateway_requests_total{endpoint="demo",status="200"}' in text
    assert 'rdv_gateway_requests_total{endpoint="_unknown",status="404"}' in text
    assert "rdv_gateway_request_latency_seconds_bucket" in text
    assert "rdv_gateway_in_flight" in text
    assert "rdv_gateway_dropped_replies_total" in text


def test_lifespan_starts_and_closes_the_bus(
    settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    with serving(build_app(settings, bus=bus, topics=topics)) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert bus.sink is not None
        assert bus.closed_with is None
    assert bus.closed_with == settings.flush_timeout_s


def test_reply_partition_must_exist(settings: GatewaySettings, topics: Topics) -> None:
    too_far = settings.model_copy(update={"reply_partition": topics.partitions("replies")})

    with pytest.raises(ConfigError, match="reply_partition"):
        build_app(too_far, bus=FakeBus(), topics=topics)


def test_missing_policies_fail_at_build(tmp_path: Path, topics: Topics) -> None:
    with pytest.raises(ConfigError, match="policy"):
        build_app(GatewaySettings(policies=tmp_path), bus=FakeBus(), topics=topics)


class StuckLoop(LoopLag):
    """Reports a saturated event loop from the start and never recovers."""

    async def _watch(self) -> None:
        self.lag_ms = 500.0


def test_a_saturated_event_loop_sheds_new_requests_at_once(
    settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    app = build_app(settings.model_copy(update={"max_loop_lag_ms": 50}), bus=bus, topics=topics)
    app.state.gateway.lag = StuckLoop()
    with serving(app) as url, httpx.Client(base_url=url) as client:
        client.get("/healthz")  # the lifespan has run the monitor by now
        resp = client.post("/v1/infer/demo", json={"inputs": 1})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == str(settings.retry_after_s)
    assert "saturated" in resp.json()["error"]["message"]
    assert bus.produced == []


def test_loop_lag_sees_a_blocked_loop() -> None:
    async def scenario() -> float:
        lag = LoopLag(interval_ms=5)
        lag.start()
        await asyncio.sleep(0.02)
        time.sleep(0.08)  # the work that blocks the loop, as CPU saturation would
        await asyncio.sleep(0.01)
        await lag.stop()
        return lag.lag_ms

    assert asyncio.run(scenario()) >= 50


def test_loop_lag_sees_a_blocked_loop_at_the_default_interval() -> None:
    """A reading every 20 ms (fewer wake-ups of an idle gateway) still sees the stall,
    and the stall still counts after the next few readings (the decay is per ms)."""

    async def scenario() -> tuple[float, float]:
        lag = LoopLag()
        lag.start()
        await asyncio.sleep(0.03)
        time.sleep(0.08)  # the work that blocks the loop
        await asyncio.sleep(0.005)
        seen = lag.lag_ms
        await asyncio.sleep(0.045)  # about two more readings
        after = lag.lag_ms
        await lag.stop()
        return seen, after

    seen, after = asyncio.run(scenario())
    assert seen >= 50
    assert seen > after >= seen * 0.9 ** (60 / 5)  # decayed by time (<= 60 ms of it)


def test_a_request_is_served_without_a_thread_hand_off(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI runs a plain ``def`` dependency in anyio's thread pool: a thread
    hand-off on every request. The gateway's routes and dependencies are ``async``."""
    handed_off: list[object] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        handed_off.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    assert client.post("/v1/infer/nope", json={"inputs": 1}).status_code == 404
    assert client.get("/readyz").status_code in (200, 503)
    assert client.get("/v1/models").status_code in (200, 403, 404, 501)
    assert handed_off == []

"""Shared by the gateway's unit tests (no tests here): an in-memory bus that plays the
rendezvous synchronously, reply builders, and a running app with an HTTP client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from services.common.codec import decode, encode
from services.common.errors import BackpressureError, MessageError
from services.common.kafka import Outbound
from services.common.messages import ErrorBody, Reply, RequestEnvelope
from services.gateway.bus import DeliveryReport, ReplySink
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings

Responder = Callable[[RequestEnvelope], list[bytes]]


def ok(env: RequestEnvelope, output: object = "yes", model: str = "champ") -> bytes:
    reply = Reply(
        request_id=env.request_id,
        model=model,
        reason="champion",
        output=output,
        decided_ms=time.time() * 1000,
    )
    return encode(reply)


def failed(env: RequestEnvelope, code: str) -> bytes:
    reply = Reply(
        request_id=env.request_id,
        model=None,
        reason="default",
        error=ErrorBody(code=code, message=f"it was {code}"),
        decided_ms=1.0,
    )
    return encode(reply)


class FakeBus:
    """Records what is produced; a responder plays the rendezvous synchronously."""

    def __init__(self) -> None:
        self.produced: list[Outbound] = []
        self.responder: Responder = lambda env: [ok(env)]
        self.is_ready = True
        self.full = False
        self.delivery_error: str | None = None
        self.sink: ReplySink | None = None
        self.dead_lettered: list[bytes | None] = []
        self.closed_with: float | None = None
        self.produced_event = threading.Event()

    def start(self, on_reply: ReplySink) -> None:
        self.sink = on_reply

    def ready(self) -> bool:
        return self.is_ready

    def produce(self, out: Outbound, on_delivery: DeliveryReport) -> None:
        if self.full:
            raise BackpressureError("producer queue full (3 records waiting)")
        self.produced.append(out)
        self.produced_event.set()
        on_delivery(self.delivery_error)  # None: delivered
        if not out.topic.endswith("requests"):
            return  # e.g. feedback: nobody answers it
        for value in self.responder(decode(out.value, RequestEnvelope)):
            self.reply(value)

    def reply(self, value: bytes | None) -> None:
        assert self.sink is not None
        try:
            self.sink(value)
        except MessageError:  # as the Kafka bus does: such records go to dead letters
            self.dead_lettered.append(value)

    def close(self, flush_timeout_s: float) -> None:
        self.closed_with = flush_timeout_s

    def envelopes(self) -> list[RequestEnvelope]:
        return [decode(o.value, RequestEnvelope) for o in self.produced]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def unit_settings(tmp_path: Path) -> GatewaySettings:
    """Endpoints demo (500 ms) and fast (100 ms); replies on partition 2; 4 KiB bodies."""
    policies = tmp_path / "policies"
    policies.mkdir()
    any_model = "stages: [{until_ms: deadline, accept: any}]\n"
    (policies / "demo.yaml").write_text("endpoint: demo\ndeadline_ms: 500\n" + any_model)
    (policies / "fast.yml").write_text("endpoint: fast\ndeadline_ms: 100\n" + any_model)
    # a busy test machine must not shed requests: shedding has its own test (StuckLoop)
    return GatewaySettings(
        policies=policies, reply_partition=2, max_body_bytes=4096, max_loop_lag_ms=60_000
    )


def endpoint_settings(tmp_path: Path, endpoint: str, models: list[str]) -> GatewaySettings:
    """One endpoint (5 s) over ``models``, any answer accepted; 64 KiB bodies."""
    policies = tmp_path / f"{endpoint}-policies"
    policies.mkdir()
    (policies / f"{endpoint}.yaml").write_text(
        f"endpoint: {endpoint}\ndeadline_ms: 5000\nmodels: [{', '.join(models)}]\n"
        "stages: [{until_ms: deadline, accept: any}]\n"
    )
    return GatewaySettings(policies=policies, max_body_bytes=65536, max_loop_lag_ms=60_000)


def assert_refused(resp: httpx.Response, bus: FakeBus, status: int, param: str | None) -> None:
    """``resp`` is the error ``status`` naming ``param`` (None: names none), and
    nothing reached Kafka."""
    assert resp.status_code == status, resp.text
    assert resp.json()["error"].get("param") == param
    assert bus.envelopes() == []


@contextmanager
def running(app: FastAPI) -> Iterator[httpx.Client]:
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client

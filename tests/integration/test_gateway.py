"""The gateway against the real broker: the test plays the rendezvous (it reads the
request envelope from the requests topic and produces the reply to its return address)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from services.common.codec import decode, encode
from services.common.kafka import Consumer, Outbound, consumer_config
from services.common.messages import Reply, RequestEnvelope, ReturnAddress
from services.common.settings import KafkaSettings
from services.common.topics import Topics, load_topics
from services.gateway.app import build_app
from services.gateway.kafka_bus import connect
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from tests.integration.kafka_io import produce_all

REPLY_PARTITION = 1
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    url: str
    http: httpx.Client
    requests: Consumer  # reads the requests topic from its start, as the rendezvous would
    kafka: KafkaSettings
    topics: Topics

    def post_later(self, pool: ThreadPoolExecutor, body: object) -> Future[httpx.Response]:
        return pool.submit(httpx.post, f"{self.url}/v1/infer/demo", json=body, timeout=30)

    def next_request(self, timeout_s: float = 30.0) -> RequestEnvelope:
        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            for rec in self.requests.consume(1, 0.2):
                return decode(rec.value, RequestEnvelope)
        raise AssertionError("no request reached the requests topic")

    def no_more_requests(self, quiet_s: float = 1.0) -> bool:
        return self.requests.consume(100, quiet_s) == []

    def reply(self, to: RequestEnvelope, values: list[bytes]) -> None:
        address = to.return_address
        produce_all(
            self.kafka,
            [
                Outbound(address.topic, to.request_id.encode(), v, partition=address.partition)
                for v in values
            ],
        )


def ok(env: RequestEnvelope, output: object) -> bytes:
    return encode(
        Reply(
            request_id=env.request_id,
            model="champ",
            reason="champion in time",
            output=output,
            decided_ms=time.time() * 1000,
        )
    )


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("rdv_gateway_dropped_replies_total", {"reason": reason}) or 0


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    (tmp_path / "demo.yaml").write_text(
        "endpoint: demo\ndeadline_ms: 20000\nstages: [{until_ms: deadline, accept: any}]\n"
    )
    return tmp_path


@pytest.fixture
def stack(kafka_settings: KafkaSettings, topics: Topics, policies: Path) -> Iterator[Stack]:
    settings = GatewaySettings(
        policies=policies,
        reply_partition=REPLY_PARTITION,
        max_body_bytes=65_536,
        max_loop_lag_ms=60_000,  # a busy test machine must not shed these requests
    )
    bus = connect(kafka_settings, topics, REPLY_PARTITION)
    app = build_app(settings, bus=bus, topics=topics)
    tap = Consumer(
        consumer_config(
            kafka_settings, f"tap-{uuid.uuid4().hex}", "tap", {"auto.offset.reset": "earliest"}
        )
    )
    tap.subscribe([topics.requests])
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            assert bus.wait_ready(30), "the reply listener was not positioned in time"
            yield Stack(url, http, tap, kafka_settings, topics)
    finally:
        tap.close()


def test_a_request_gets_the_reply_sent_to_its_return_address(stack: Stack) -> None:
    assert stack.http.get("/readyz").status_code == 200
    unknown, junk = dropped("unknown"), dropped("undecodable")
    stray = Reply(request_id=uuid.uuid4().hex, model="x", reason="r", output="WRONG", decided_ms=1)

    with ThreadPoolExecutor(1) as pool:
        answer = stack.post_later(pool, {"inputs": {"text": "hi"}, "attributes": {"user": "u1"}})
        env = stack.next_request()
        assert env.endpoint == "demo"
        assert env.payload == {"text": "hi"}
        assert env.attributes == {"user": "u1"}
        assert env.return_address == ReturnAddress(
            topic=stack.topics.replies, partition=REPLY_PARTITION
        )
        assert env.deadline_epoch_ms - env.created_ms == 20_000
        # same partition, so these two are read before the real one
        stack.reply(env, [encode(stray), b"not a reply", ok(env, {"label": "positive"})])
        resp = answer.result(timeout=30)

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["request_id"] == env.request_id == resp.headers["x-rdv-request-id"]
    assert body["output"] == {"label": "positive"}
    assert (body["model"], body["reason"]) == ("champ", "champion in time")
    assert resp.headers["x-rdv-model"] == "champ"
    assert resp.headers["x-rdv-reason"] == "champion in time"
    assert 0 < body["latency_ms"] < 20_000
    assert dropped("unknown") == unknown + 1
    assert dropped("undecodable") == junk + 1
    assert "rdv_gateway_requests_total" in stack.http.get("/metrics").text


def test_no_reply_is_answered_504_right_after_the_deadline(stack: Stack) -> None:
    started = time.monotonic()
    resp = stack.http.post("/v1/infer/demo", json={"inputs": 1, "deadline_ms": 300})
    took_ms = (time.monotonic() - started) * 1000

    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "no_answer"
    assert 300 <= took_ms < 300 + 100, f"answered after {took_ms:.0f} ms"
    assert stack.next_request().request_id == resp.headers["x-rdv-request-id"]


def test_bad_requests_are_refused_and_never_produced(stack: Stack) -> None:
    json_type = {"content-type": "application/json"}
    refused = [
        stack.http.post("/v1/infer/demo", content=b"garbage", headers=json_type),
        stack.http.post("/v1/infer/demo", json={"inputs": 1, "deadline_ms": "soon"}),
        stack.http.post("/v1/infer/demo", json={"inputs": 1, "deadline_ms": 0}),
        stack.http.post("/v1/infer/demo", json={"input": 1}),
        stack.http.post("/v1/infer/demo", json=[1, 2]),
        stack.http.post(
            "/v1/infer/demo", content=b"inputs=1", headers={"content-type": "text/plain"}
        ),
        stack.http.post("/v1/infer/demo", content=b"x" * 200_000, headers=json_type),
        stack.http.post("/v1/infer/nope", json={"inputs": 1}),
    ]
    statuses = [r.status_code for r in refused]
    assert statuses == [422, 422, 422, 422, 422, 415, 413, 404]
    for resp in refused:
        assert set(resp.json()["error"]) == {"code", "message"}

    good = stack.http.post("/v1/infer/demo", json={"inputs": "ok", "deadline_ms": 50})

    assert good.status_code == 504
    env = stack.next_request()
    assert env.payload == "ok"
    assert stack.no_more_requests()


def test_unreachable_kafka_is_503_with_retry_after(policies: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}", topic_prefix="nowhere.")
    topics = load_topics(prefix=kafka.topic_prefix)
    app = build_app(
        GatewaySettings(policies=policies), bus=connect(kafka, topics, 0), topics=topics
    )

    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        ready = http.get("/readyz")
        resp = http.post("/v1/infer/demo", json={"inputs": 1})
        alive = http.get("/healthz")

    assert ready.status_code == 503
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "kafka_unavailable"
    assert alive.status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> bool:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.05)
    return False


def test_the_process_starts_serves_and_stops_on_sigterm(
    kafka_settings: KafkaSettings, policies: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RDV_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "RDV_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "RDV_GATEWAY_PORT": str(port),
        "RDV_GATEWAY_POLICIES": str(policies),
    }
    log_file = tmp_path / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway"], cwd=REPO, env=env, stderr=log
        )
        try:
            assert wait_ready(url, proc), log_file.read_text()
            resp = httpx.post(f"{url}/v1/infer/demo", json={"inputs": 1, "deadline_ms": 50})
            proc.send_signal(signal.SIGTERM)
            # uvicorn stops gracefully, then re-raises the signal: killed by SIGTERM
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert resp.status_code == 504  # nobody plays the rendezvous here
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert "gateway started" in messages
    assert "gateway stopped" in messages
    assert all(line["service"] == "gateway" for line in lines)

"""Traces on the real broker: one trace per request across the gateway, the workers, the
rendezvous and the reply, with every parent link checked by span id, for a champion
answer, a fallback answer and a deadline miss.

The services run in this process (the gateway under uvicorn, the rendezvous and each
worker on their own thread, each with its own Kafka clients and consumer group), so
the SDK's in-memory exporter sees every span; across processes the same context
travels in the same record headers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import tracing
from services.common.settings import KafkaSettings
from services.common.spec import load_spec
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.kafka_bus import connect
from services.gateway.server import serving
from services.gateway.settings import GatewaySettings
from services.rendezvous.__main__ import build as build_rendezvous
from services.rendezvous.settings import RendezvousSettings
from services.workers.runtime import create_runtime
from services.workers.service import build_worker
from services.workers.settings import WorkerSettings
from tests.integration.stack import wait_for

POLICIES: list[dict[str, Any]] = [
    {
        "endpoint": "ranked",
        "deadline_ms": 3000,
        "models": ["champ", "chall"],
        "stages": [
            {"until_ms": 1000, "accept": ["champ"]},
            {"until_ms": "deadline", "accept": "any"},
        ],
    },
    {
        "endpoint": "failover",
        "deadline_ms": 3000,
        "models": ["broken", "backup"],
        "stages": [
            {"until_ms": 1500, "accept": ["broken"]},
            {"until_ms": "deadline", "accept": ["broken", "backup"]},
        ],
    },
    {
        "endpoint": "slow",
        "deadline_ms": 500,
        "models": ["sleepy"],
        "stages": [{"until_ms": "deadline", "accept": "any"}],
    },
]
WORKERS = {
    "champ": "echo:name=champ,role=champion,endpoints=ranked",
    "chall": "echo:name=chall,role=challenger,endpoints=ranked",
    "broken": "failing:name=broken,role=champion,endpoints=failover",
    "backup": "echo:name=backup,role=challenger,endpoints=failover",
    "sleepy": "echo:name=sleepy,role=champion,endpoints=slow,latency_ms=1500",
}
ROOT = "POST /v1/infer/{endpoint}"


@dataclass
class Traced:
    http: httpx.Client
    spans: InMemorySpanExporter
    topics: Topics


def _thread(name: str, run: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def traced(kafka_settings: KafkaSettings, topics: Topics, tmp_path: Path) -> Iterator[Traced]:
    """Tracing on (in memory), then the gateway, the rendezvous and WORKERS, all ready."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    policies = tmp_path / "policies"
    policies.mkdir()
    for doc in POLICIES:
        (policies / f"{doc['endpoint']}.yaml").write_text(yaml.safe_dump(doc))
    runner, _ = build_rendezvous(
        RendezvousSettings(policies=policies, auto_offset_reset="earliest"), kafka_settings
    )
    workers = [
        build_worker(
            kafka=kafka_settings,
            settings=WorkerSettings(auto_offset_reset="earliest"),
            spec=(spec := load_spec(text)),
            model=create_runtime(spec.runtime, spec.params),
            topics=topics,
        )
        for text in WORKERS.values()
    ]
    threads = [_thread("rendezvous", runner.run)]
    threads += [_thread(f"worker-{w.spec.name}", w.run) for w in workers]
    settings = GatewaySettings(policies=policies, max_loop_lag_ms=60_000)
    bus = connect(kafka_settings, topics, settings.reply_partition)
    app = build_app(settings, bus=bus, topics=topics)
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            assert bus.wait_ready(30), "the reply listener was not positioned in time"
            wait_for(
                lambda: runner.ready and all(w.ready() for w in workers),
                60,
                lambda: "the rendezvous and every worker owning partitions",
            )
            yield Traced(http, exporter, topics)
    finally:
        runner.stop()
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(30)
        tracing.install(None)


def span_id(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.span_id:016x}"


def trace_id(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.trace_id:032x}"


def parent(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


def trace_of(spans: InMemorySpanExporter, trace: str) -> dict[str, ReadableSpan]:
    """The finished spans of one trace by name; two spans of one name fail the test."""
    found = [s for s in spans.get_finished_spans() if trace_id(s) == trace]
    by_name = {s.name: s for s in found}
    assert len(by_name) == len(found), f"repeated span names: {[s.name for s in found]}"
    return by_name


def trace_for(spans: InMemorySpanExporter, request_id: str) -> str:
    """The trace id of the gateway's span for ``request_id`` (waited for: it ends once
    the response went out)."""

    def roots() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.name == ROOT and dict(s.attributes or {}).get("rdv.request_id") == request_id
        ]

    wait_for(lambda: bool(roots()), 10, lambda: f"no gateway span for {request_id}")
    (root,) = roots()
    return trace_id(root)


def check_trace(
    traced: Traced, resp: httpx.Response, endpoint: str, models: list[str]
) -> ReadableSpan:
    """The request's trace, once complete: gateway root -> send -> one predict span per
    model and the decision (linked to the scores it saw) -> the gateway's reply span;
    returns the decision span."""
    request_id = resp.headers["x-rdv-request-id"]
    trace = trace_for(traced.spans, request_id)
    if resp.status_code == 200:  # error bodies name the request only
        assert resp.headers["x-rdv-trace-id"] == trace
    send = f"send {traced.topics.requests}"
    wanted = {ROOT, send, f"decide {endpoint}", "reply", *(f"predict {m}" for m in models)}
    wait_for(
        lambda: set(trace_of(traced.spans, trace)) >= wanted,
        20,
        lambda: f"trace {trace} has {sorted(trace_of(traced.spans, trace))}, wants {wanted}",
    )
    spans = trace_of(traced.spans, trace)
    assert set(spans) == wanted
    root, sent = spans[ROOT], spans[send]
    decide, reply = spans[f"decide {endpoint}"], spans["reply"]
    assert (root.kind, parent(root)) == (SpanKind.SERVER, None)
    assert (sent.kind, parent(sent)) == (SpanKind.PRODUCER, span_id(root))
    predicts = [spans[f"predict {m}"] for m in models]
    for span in predicts:
        assert (span.kind, parent(span)) == (SpanKind.CONSUMER, span_id(sent)), span.name
    assert (decide.kind, parent(decide)) == (SpanKind.CONSUMER, span_id(sent))
    assert (reply.kind, parent(reply)) == (SpanKind.CONSUMER, span_id(decide))
    linked = {f"{link.context.span_id:016x}" for link in decide.links}
    assert linked <= {span_id(s) for s in predicts}, "the decision links only to scores"
    for span in spans.values():
        assert dict(span.attributes or {}).get("rdv.request_id") == request_id, span.name
    elsewhere = [
        s
        for s in traced.spans.get_finished_spans()
        if trace_id(s) != trace and dict(s.attributes or {}).get("rdv.request_id") == request_id
    ]
    assert elsewhere == [], "one trace per request"
    assert dict(root.attributes or {})["http.response.status_code"] == resp.status_code
    return decide


def test_one_trace_per_request_across_every_hop(traced: Traced) -> None:
    champion = traced.http.post("/v1/infer/ranked", json={"inputs": {"text": "hi"}})
    assert champion.status_code == 200, champion.text
    assert champion.json()["reason"] == "champion_in_time"
    decide = check_trace(traced, champion, "ranked", ["champ", "chall"])
    attrs = dict(decide.attributes or {})
    assert (attrs["rdv.reason"], attrs["rdv.model"], attrs["rdv.stage"]) == (
        "champion_in_time",
        "champ",
        0,
    )
    champ = trace_of(traced.spans, champion.headers["x-rdv-trace-id"])["predict champ"]
    assert span_id(champ) in {f"{link.context.span_id:016x}" for link in decide.links}
    assert decide.status.status_code is StatusCode.UNSET

    # the champion fails at once: the next stage's model answers
    fallback = traced.http.post("/v1/infer/failover", json={"inputs": [1, 2]})
    assert fallback.status_code == 200, fallback.text
    decide = check_trace(traced, fallback, "failover", ["broken", "backup"])
    attrs = dict(decide.attributes or {})
    assert (attrs["rdv.reason"], attrs["rdv.model"], attrs["rdv.stage"]) == (
        "fallback:1",
        "backup",
        1,
    )
    broken = trace_of(traced.spans, fallback.headers["x-rdv-trace-id"])["predict broken"]
    assert broken.status.status_code is StatusCode.ERROR
    assert dict(broken.attributes or {})["rdv.score_status"] == "error"

    # the only model answers after the deadline: the default, decided at the deadline;
    # its late score is still a span of the same trace
    missed = traced.http.post("/v1/infer/slow", json={"inputs": 1})
    assert missed.status_code == 504, missed.text
    decide = check_trace(traced, missed, "slow", ["sleepy"])
    attrs = dict(decide.attributes or {})
    assert attrs["rdv.reason"] == "deadline_exceeded"
    assert "rdv.model" not in attrs
    assert "rdv.stage" not in attrs
    assert decide.status.status_code is StatusCode.ERROR
    assert decide.links == ()  # no score had arrived
    sleepy = trace_of(traced.spans, trace_for(traced.spans, missed.headers["x-rdv-request-id"]))[
        "predict sleepy"
    ]
    assert sleepy.end_time is not None
    assert decide.end_time is not None
    assert sleepy.end_time > decide.end_time, "the score came after the decision"

    ids = {
        trace_for(traced.spans, r.headers["x-rdv-request-id"]) for r in (champion, fallback, missed)
    }
    assert len(ids) == 3

"""services.common.tracing: when it is on, the traceparent in Kafka headers, the spans of
each hop and their parents; the off path records nothing and adds no header."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.context import Context as TraceContext
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import tracing
from services.common.codec import encode
from services.common.errors import ConfigError
from services.common.kafka import Outbound, Record
from services.common.loop import Context, Inbound
from services.common.messages import Decision, ErrorBody
from services.common.spec import load_spec
from services.common.topics import load_topics
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from services.workers.runtime import create_runtime
from services.workers.worker import ModelWorker
from tests.factories import request
from tests.unit.gateway.fakes import FakeBus, running, unit_settings

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span exported at once to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)


def record(topic: str, headers: tracing.Headers = (), key: bytes = b"r1") -> Record:
    return Record(topic, 0, 7, key, b"{}", headers)


def header(headers: tracing.Headers, name: str) -> str:
    found = [v.decode() for k, v in headers if k == name]
    assert len(found) == 1, f"{name} appears {len(found)} times in {headers}"
    return found[0]


def ids(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_the_environment_turns_tracing_on(env: dict[str, str], on: bool) -> None:
    assert tracing.enabled_by(env) is on


def test_off_setup_installs_nothing_and_call_sites_add_no_header() -> None:
    assert tracing.setup("rdv-test", {}) is False
    assert not tracing.enabled()
    with tracing.receiving(record("replies", (("traceparent", PARENT.encode()),))) as span:
        assert span is None  # the shared no-op


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "'grpc'"),
    ],
)
def test_an_unsupported_exporter_is_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        tracing.setup("rdv-test", env)
    assert not tracing.enabled()


def test_inject_replaces_a_trace_context_and_extract_reads_it(
    spans: InMemorySpanExporter,
) -> None:
    span = tracing.server_span("x", (("traceparent", PARENT.encode()),))
    headers = tracing.inject(span, (("traceparent", b"stale"), ("other", b"kept")))
    span.end()
    assert ("other", b"kept") in headers
    trace_id, span_id = ids(spans.get_finished_spans()[0])
    assert header(headers, "traceparent") == f"00-{trace_id}-{span_id}-01"
    assert trace_id == PARENT.split("-")[1], "the server span continues the incoming trace"
    extracted = tracing.extract(headers)
    assert trace.get_current_span(extracted).get_span_context().span_id == int(span_id, 16)
    assert tracing.extract([("other", b"x")]) == TraceContext()


def test_a_worker_score_carries_its_predict_span_a_child_of_the_request(
    spans: InMemorySpanExporter,
) -> None:
    spec = load_spec("echo:name=champ,role=champion,endpoints=demo")
    worker = ModelWorker(spec, create_runtime(spec.runtime, spec.params), "scores")
    worker.model.load()
    req = request({"text": "hi"})
    rec = Record(
        "requests", 3, 11, req.request_id.encode(), encode(req), (("traceparent", PARENT.encode()),)
    )
    ctx = Context()
    worker.process([Inbound(rec, req)], ctx)
    ((out, sources),) = ctx.emits
    assert sources == (rec,)
    (span,) = spans.get_finished_spans()
    assert span.name == "predict champ"
    assert span.kind is SpanKind.CONSUMER
    assert ids(span)[0] == PARENT.split("-")[1]
    assert parent_id(span) == PARENT.split("-")[2]
    assert header(out.headers, "traceparent") == f"00-{ids(span)[0]}-{ids(span)[1]}-01"
    attrs = dict(span.attributes or {})
    assert attrs["rdv.request_id"] == req.request_id
    assert attrs["rdv.endpoint"] == "demo"
    assert attrs["rdv.model"] == "champ"
    assert attrs["rdv.score_status"] == "ok"
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.destination.name"] == "requests"
    assert attrs["messaging.kafka.offset"] == 11


def test_without_tracing_a_score_has_no_headers() -> None:
    spec = load_spec("echo:name=champ,role=champion,endpoints=demo")
    worker = ModelWorker(spec, create_runtime(spec.runtime, spec.params), "scores")
    worker.model.load()
    req = request(1)
    rec = Record("requests", 0, 1, b"k", encode(req), (("traceparent", PARENT.encode()),))
    ctx = Context()
    worker.process([Inbound(rec, req)], ctx)
    assert ctx.emits[0][0].headers == ()


def decision(reason: str, model: str | None, elapsed_ms: float = 40.0) -> Decision:
    now = time.time() * 1000
    return Decision(
        request_id="r1",
        endpoint="demo",
        chosen_model=model,
        reason=reason,
        in_time=["a"],
        late=[],
        latencies_ms={},
        elapsed_ms=elapsed_ms,
        decided_ms=now,
    )


def test_the_decision_span_is_a_child_of_the_request_linked_to_its_scores(
    spans: InMemorySpanExporter,
) -> None:
    score_ctx = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    refs = [
        record("scores", (("traceparent", score_ctx.encode()),)),
        record("requests", (("traceparent", PARENT.encode()),)),
        record("scores"),  # a score from a worker without tracing: no link
    ]
    headers = tracing.decision_span(decision("fallback:2", "backup"), None, refs, "requests")
    (span,) = spans.get_finished_spans()
    assert span.name == "decide demo"
    assert parent_id(span) == PARENT.split("-")[2]
    assert [f"{link.context.span_id:016x}" for link in span.links] == ["00f067aa0ba902b7"]
    attrs = dict(span.attributes or {})
    assert (attrs["rdv.reason"], attrs["rdv.model"], attrs["rdv.stage"]) == (
        "fallback:2",
        "backup",
        2,
    )
    assert span.end_time is not None
    assert span.start_time is not None
    assert 39e6 <= span.end_time - span.start_time <= 41e6, "from the request's arrival on"
    assert span.status.status_code is StatusCode.UNSET
    assert header(headers, "traceparent").split("-")[2] == ids(span)[1]


def test_a_deadline_miss_marks_the_decision_span_failed(spans: InMemorySpanExporter) -> None:
    refs = [record("requests", (("traceparent", PARENT.encode()),))]
    error = ErrorBody(code="deadline_exceeded", message="no model answered in time")
    tracing.decision_span(decision("deadline_exceeded", None), error, refs, "requests")
    (span,) = spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["rdv.reason"] == "deadline_exceeded"
    assert "rdv.model" not in attrs
    assert "rdv.stage" not in attrs
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["error.type"] == "deadline_exceeded"


@pytest.mark.parametrize(
    ("reason", "stage"),
    [
        ("champion_in_time", 0),
        ("fallback:1", 1),
        ("fallback:12", 12),
        ("canary", None),
        ("deadline_exceeded", None),
        ("fallback:x", None),
    ],
)
def test_stage_of_a_reason(reason: str, stage: int | None) -> None:
    assert tracing.stage_of(reason) == stage


def test_receiving_a_reply_is_a_child_of_its_decision_and_skips_records_without_one(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.receiving(record("replies")) as nothing:
        assert nothing is None
    with tracing.receiving(record("replies", (("traceparent", PARENT.encode()),))):
        pass
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind) == ("reply", SpanKind.CONSUMER)
    assert parent_id(span) == PARENT.split("-")[2]
    assert dict(span.attributes or {})["rdv.request_id"] == "r1"


def test_a_send_span_ends_with_the_delivery_report(spans: InMemorySpanExporter) -> None:
    reports: list[str | None] = []
    out, report = tracing.sending(Outbound("requests", b"r1", b"{}"), reports.append, {})
    assert spans.get_finished_spans() == ()
    report("_MSG_TIMED_OUT: timed out")
    (span,) = spans.get_finished_spans()
    assert reports == ["_MSG_TIMED_OUT: timed out"]
    assert (span.name, span.kind) == ("send requests", SpanKind.PRODUCER)
    assert span.status.status_code is StatusCode.ERROR
    assert header(out.headers, "traceparent").split("-")[2] == ids(span)[1]


def test_the_gateway_span_continues_the_client_trace_and_parents_the_request_record(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    settings: GatewaySettings = unit_settings(tmp_path)
    bus = FakeBus()
    app = build_app(settings, bus=bus, topics=load_topics(prefix="unit."))
    with running(app) as client:
        resp = client.post("/v1/infer/demo", json={"inputs": 1}, headers={"traceparent": PARENT})
        assert client.get("/readyz").status_code == 200
    assert resp.status_code == 200, resp.text
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"POST /v1/infer/{endpoint}", "send unit.rdv.requests"}
    root, send = finished["POST /v1/infer/{endpoint}"], finished["send unit.rdv.requests"]
    trace_id = PARENT.split("-")[1]
    assert ids(root)[0] == ids(send)[0] == trace_id
    assert parent_id(root) == PARENT.split("-")[2]
    assert parent_id(send) == ids(root)[1]
    (out,) = bus.produced
    assert header(out.headers, "traceparent") == f"00-{trace_id}-{ids(send)[1]}-01"
    assert resp.headers["x-rdv-trace-id"] == trace_id
    assert bus.envelopes()[0].trace_id == trace_id
    attrs = dict(root.attributes or {})
    assert attrs["http.route"] == "/v1/infer/{endpoint}"
    assert attrs["http.response.status_code"] == 200
    assert attrs["rdv.request_id"] == resp.headers["x-rdv-request-id"]
    assert attrs["rdv.endpoint"] == "demo"

"""Traces across the hops (OpenTelemetry): setup from the ``OTEL_*`` environment, the W3C
``traceparent`` in Kafka record headers, and the spans each service records.

Off unless the environment turns it on (``enabled_by``): then no SDK is imported, no
provider installed, and every call site pays one ``enabled()`` check, nothing per record
beyond it. On, each process has one tracer provider (its ``service.name`` defaults to
the one ``setup`` is given; ``OTEL_SERVICE_NAME`` or ``OTEL_RESOURCE_ATTRIBUTES`` win)
with a batch span processor per exporter named in ``OTEL_TRACES_EXPORTER``: ``otlp``
(HTTP/protobuf, ``OTEL_EXPORTER_OTLP_ENDPOINT``...) or ``console``. Sampling follows
``OTEL_TRACES_SAMPLER`` (default: parent-based, always on).

The trace of one request (span kinds in brackets):

    POST /v1/infer/{endpoint} [server, gateway]        continues an incoming traceparent
      send <requests topic>   [producer, gateway]      its context rides in the record
        predict <model>       [consumer, each worker]  the score record carries its context
        decide <endpoint>     [consumer, rendezvous]   linked to the scores that arrived;
          reply               [consumer, gateway]      the reply and decision records
                                                       carry the decision's context
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.errors import ConfigError
from services.common.kafka import Outbound, Record
from services.common.messages import Decision, ErrorBody, Score

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

Headers = tuple[tuple[str, bytes], ...]
AttributeValue = str | int | float | bool | Sequence[str]
Attributes = Mapping[str, AttributeValue]

SCOPE = "rendezvous"
"""The instrumentation scope of every span the services record."""
TRACE_HEADERS = ("traceparent", "tracestate")
EXPORTERS = ("otlp", "console")

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: AbstractContextManager[None] = nullcontext()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def enabled_by(env: Mapping[str, str]) -> bool:
    """Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (anything but
    ``none``) or, without it, an OTLP endpoint is set; ``OTEL_SDK_DISABLED=true`` wins."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Install this process's tracer provider when ``env`` (default: the process's)
    turns tracing on; returns whether it did. Raises ConfigError for an exporter or an
    OTLP protocol this build does not have."""
    env = os.environ if env is None else env
    if not enabled_by(env):
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    exporters = [_exporter(name, env) for name in names if name and name != "none"]
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    install(provider)
    return True


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (known: {', '.join(EXPORTERS)}, none)"
        )
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported, only http/protobuf "
            "(an OTLP receiver's port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()


def install(provider: TracerProvider | None) -> None:
    """Record spans with ``provider`` from now on (None: tracing off). ``setup`` calls
    it; tests pass a provider with an in-memory exporter."""
    global _tracer, _provider  # noqa: PLW0603 - the process's one switch
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(SCOPE)


def shutdown() -> None:
    """Export what is buffered and stop (a process's last step); a no-op when off."""
    if _provider is not None:
        _provider.shutdown()
    install(None)


def enabled() -> bool:
    """The one check every call site makes before touching spans."""
    return _tracer is not None


def _on() -> Tracer:
    assert _tracer is not None, "tracing is off: check enabled() first"
    return _tracer


# -- propagation ------------------------------------------------------------------------


def extract(headers: Iterable[tuple[str, bytes]]) -> Context:
    """The trace context in Kafka record headers (an empty one when they carry none)."""
    carrier = {k: v.decode("latin-1") for k, v in headers if k in TRACE_HEADERS}
    return _PROPAGATOR.extract(carrier) if carrier else Context()


def inject(span: Span, headers: Headers = ()) -> Headers:
    """``headers`` with ``span``'s ``traceparent`` (and ``tracestate``) in place of any."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    kept = tuple((k, v) for k, v in headers if k not in TRACE_HEADERS)
    return kept + tuple((k, v.encode("latin-1")) for k, v in carrier.items())


def _ns(epoch_ms: float) -> int:
    return int(epoch_ms * 1_000_000)


def _messaging(rec: Record, operation: str) -> Attributes:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.destination.name": rec.topic,
        "messaging.destination.partition.id": str(rec.partition),
        "messaging.kafka.offset": rec.offset,
        "messaging.kafka.message.key": (rec.key or b"").decode("utf-8", "replace"),
    }


# -- the spans of each hop --------------------------------------------------------------


def server_span(name: str, headers: Headers) -> Span:
    """A server span (the gateway's HTTP request) continuing the context in ``headers``
    (a client's ``traceparent``), else the root of a new trace."""
    return _on().start_span(name, context=extract(headers), kind=SpanKind.SERVER)


def sending(
    out: Outbound, report: Callable[[str | None], None], attributes: Attributes
) -> tuple[Outbound, Callable[[str | None], None]]:
    """A producer span for ``out`` (child of the current context: the gateway's HTTP
    span), ended by the delivery report: ``out`` with its context in the headers and the
    report to hand the producer instead of ``report``."""
    span = _on().start_span(
        f"send {out.topic}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": out.topic,
            "messaging.kafka.message.key": out.key.decode("utf-8", "replace"),
            **attributes,
        },
    )

    def delivered(error: str | None) -> None:
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        report(error)

    traced = Outbound(out.topic, out.key, out.value, inject(span, out.headers), out.partition)
    return traced, delivered


def _carried(traceparent: str | None) -> Headers:
    return () if traceparent is None else (("traceparent", traceparent.encode("latin-1")),)


def traceparent_of(record: Record) -> str | None:
    """The record's W3C ``traceparent`` header, if it has one."""
    value = next((v for k, v in record.headers if k == "traceparent"), None)
    return None if value is None else value.decode("latin-1")


def score_span(record: Record, score: Score) -> Headers:
    """The worker's span for one request (child of the request record's context, over
    the model call's time) recorded; the headers for its score record."""
    attributes: dict[str, AttributeValue] = {
        **_messaging(record, "process"),
        "rdv.request_id": score.request_id,
        "rdv.endpoint": score.endpoint,
        "rdv.model": score.model,
        "rdv.model_version": score.model_version,
        "rdv.role": score.role.value,
        "rdv.score_status": score.status.value,
    }
    span = _on().start_span(
        f"predict {score.model}",
        context=extract(record.headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        start_time=_ns(score.timings.started_ms),
    )
    if score.error is not None:
        _failed(span, score.error)
    span.end(_ns(max(score.timings.finished_ms, score.timings.started_ms)))
    return inject(span)


def decision_span(
    decision: Decision,
    error: ErrorBody | None,
    refs: Sequence[Record],
    requests_topic: str,
    traceparent: str | None = None,
) -> Headers:
    """The rendezvous's span for one decision (child of the request record's context,
    from the request's arrival to the decision, linked to the score records among
    ``refs``) recorded; the headers for its reply and decision records. Decided before
    the request record was read (from a score's copy of the request), it is a child of
    the request's ``traceparent`` as that copy gives it."""
    request = next((r for r in refs if r.topic == requests_topic), None)
    parent = extract(request.headers if request is not None else _carried(traceparent))
    scores = [r for r in refs if r.topic != requests_topic]
    links = [
        Link(ctx)
        for r in scores
        if (ctx := trace.get_current_span(extract(r.headers)).get_span_context()).is_valid
    ]
    attributes: dict[str, AttributeValue] = {
        "rdv.request_id": decision.request_id,
        "rdv.endpoint": decision.endpoint,
        "rdv.reason": decision.reason,
        "rdv.in_time": decision.in_time,
        "rdv.late": decision.late,
        "rdv.elapsed_ms": decision.elapsed_ms,
    }
    if request is not None:
        attributes |= _messaging(request, "process")
    if decision.chosen_model is not None:
        attributes["rdv.model"] = decision.chosen_model
    if (stage := stage_of(decision.reason)) is not None:
        attributes["rdv.stage"] = stage
    if decision.policy_version is not None:
        attributes["rdv.policy_version"] = decision.policy_version
    span = _on().start_span(
        f"decide {decision.endpoint}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        start_time=_ns(decision.decided_ms - decision.elapsed_ms),
    )
    if error is not None:
        _failed(span, error)
    span.end(_ns(decision.decided_ms))
    return inject(span)


def stage_of(reason: str) -> int | None:
    """The policy stage an answer's reason names (``champion_in_time``: 0,
    ``fallback:<i>``: i), else None."""
    if reason == "champion_in_time":
        return 0
    head, _, index = reason.partition(":")
    return int(index) if head == "fallback" and index.isdigit() else None


def receiving(record: Record, name: str = "reply") -> AbstractContextManager[object]:
    """A consumer span around handling ``record``, child of the context its headers
    carry; a shared no-op when tracing is off or the record carries no context."""
    if _tracer is None or not any(k == "traceparent" for k, _ in record.headers):
        return _NO_SPAN
    return _tracer.start_as_current_span(
        name,
        context=extract(record.headers),
        kind=SpanKind.CONSUMER,
        attributes={
            **_messaging(record, "process"),
            "rdv.request_id": (record.key or b"").decode("utf-8", "replace"),
        },
    )


def _failed(span: Span, error: ErrorBody) -> None:
    span.set_attribute("error.type", error.code)
    span.set_status(Status(StatusCode.ERROR, error.code))

"""The gateway's Prometheus metrics (names prefixed ``rdv_gateway_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN_ENDPOINT = "_unknown"
"""The endpoint label of requests for an endpoint that does not exist (bounds the
label's cardinality)."""

REQUESTS = Counter(
    "rdv_gateway_requests_total", "Inference requests answered", ["endpoint", "status"]
)
LATENCY = Histogram(
    "rdv_gateway_request_latency_seconds",
    "Wall time from receiving an inference request to answering it",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
IN_FLIGHT = Gauge("rdv_gateway_in_flight", "Requests waiting for their reply")
PENDING_BYTES = Gauge(
    "rdv_gateway_pending_bytes", "Bytes of the requests waiting for their reply (envelopes)"
)
SHED = Counter(
    "rdv_gateway_shed_total",
    "Requests refused with 503 because a memory bound was reached",
    ["bound"],
)
DROPPED_REPLIES = Counter(
    "rdv_gateway_dropped_replies_total",
    "Records on the reply partition that answered no waiting request",
    ["reason"],  # undecodable; unknown (not ours, or long gone); finished (answered already)
)
DROPPED_STREAM_RECORDS = Counter(
    "rdv_gateway_dropped_stream_records_total",
    "Streaming deltas and grants that reached no streaming request, or overflowed one",
    ["kind", "reason"],  # kind delta | grant; reason unknown, finished, not_streaming, overflow
)
STREAMS = Counter(
    "rdv_gateway_streams_total",
    "Streamed chat completions by how they ended",
    ["endpoint", "outcome"],  # done, error (an error event), disconnected
)
STREAM_MISMATCHES = Counter(
    "rdv_gateway_stream_mismatches_total",
    "Streams whose final answer did not extend the text already streamed",
    ["endpoint"],
)
DELIVERY_FAILURES = Counter(
    "rdv_gateway_delivery_failures_total", "Requests the broker did not acknowledge"
)
FEEDBACK = Counter("rdv_gateway_feedback_total", "POST /v1/feedback requests", ["status"])
AUTH_FAILURES = Counter(
    "rdv_gateway_auth_failures_total",
    "Requests refused for their API key (keys on)",
    ["reason"],  # missing, malformed (not Bearer), invalid (unknown key), forbidden (role)
)
RATE_LIMITED = Counter(
    "rdv_gateway_rate_limited_total",
    "Requests refused with 429 by the rate limit",
    ["key"],  # the API key's name; _ip when keys are off (limited per client IP)
)

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
DROPPED_REPLIES = Counter(
    "rdv_gateway_dropped_replies_total",
    "Records on the reply partition that answered no waiting request",
    ["reason"],  # undecodable; unknown (not ours, or long gone); finished (answered already)
)
DELIVERY_FAILURES = Counter(
    "rdv_gateway_delivery_failures_total", "Requests the broker did not acknowledge"
)
FEEDBACK = Counter("rdv_gateway_feedback_total", "POST /v1/feedback requests", ["status"])

"""The worker's Prometheus metrics (prefix ``rdv_worker_``, label ``model``)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

PREDICT_SECONDS = Histogram(
    "rdv_worker_predict_seconds",
    "Time one predict_batch call took",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "rdv_worker_batch_size",
    "Requests per predict_batch call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
ENGINE_INFO = Gauge(
    "rdv_worker_chat_engine_info",
    "The chat engine's runtime and precision in this process (1) and what chose them",
    ["runtime", "dtype", "quantize", "chosen_by"],
)
SCORED = Counter("rdv_worker_scored_total", "Requests scored successfully (status ok)", ["model"])
ERRORS = Counter("rdv_worker_errors_total", "Requests answered with an error score", ["model"])
SKIPPED = Counter(
    "rdv_worker_skipped_total",
    "Requests not predicted because their deadline had passed",
    ["model"],
)
REDELIVERED = Counter(
    "rdv_worker_redelivered_total",
    "Request records read again while their request was still generating (held, not failed)",
    ["model"],
)
TOKENS = Counter(
    "rdv_worker_tokens_total",
    "Tokens of generative models (kind: prompt, completion, prompt_reused: prompt tokens "
    "taken from the runtime's cache of a shared prompt start)",
    ["model", "kind"],
)
TTFT = Histogram(
    "rdv_worker_time_to_first_token_seconds",
    "From a request's submission to its first generated token",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS_PER_S = Histogram(
    "rdv_worker_tokens_per_second",
    "Completion tokens per second of one request (from joining the batch to its end)",
    ["model"],
    buckets=(1, 2, 5, 10, 20, 40, 80, 160, 320),
)
DELTAS = Counter(
    "rdv_worker_stream_deltas_total",
    "Delta records sent to the return address of streaming requests",
    ["model"],
)
FINISHED = Counter("rdv_worker_finished_total", "Generations by finish reason", ["model", "reason"])
IN_FLIGHT = Gauge(
    "rdv_worker_in_flight",
    "Requests inside the model now: the batch of the predict_batch call under way (0 "
    "between calls)",
    ["model"],
)
BATCH_MAX = Gauge(
    "rdv_worker_batch_max_size",
    "The model spec's batch.max_size: batch fill is rdv_worker_batch_size's mean over this",
    ["model"],
)
DEADLINE_LEFT = Gauge(
    "rdv_worker_deadline_left_seconds",
    "Deadline budget the most urgent request of the latest consumed batch had left when "
    "the batch was consumed (its deadline minus that moment; negative: already past, "
    "skipped); kept until the next batch",
    ["model"],
)
LAG = Gauge(
    "rdv_worker_consumer_lag",
    "Requests not yet read, per owned partition of the requests topic",
    ["model", "partition"],
)


class LagGauge:
    """Publishes one model's per-partition lag; forgets partitions it no longer owns."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._shown: set[str] = set()

    def publish(self, lag: Mapping[tuple[str, int], int]) -> None:
        current = {str(partition): count for (_topic, partition), count in lag.items()}
        for gone in self._shown - current.keys():
            LAG.remove(self.model, gone)
        for partition, count in current.items():
            LAG.labels(self.model, partition).set(count)
        self._shown = set(current)

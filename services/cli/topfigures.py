"""The figures ``rdv top`` shows, from two snapshots of the platform's /metrics a moment
apart (pure: no I/O). Counts are since the processes started; ``per_s`` and the window
quantiles are between the two snapshots.

- per endpoint (gateway, rendezvous): requests answered and requests/s, answers by
  model and reason, deadline misses (the rendezvous's ``deadline_exceeded`` decisions;
  gateway 504s apart), gateway latency p50/p99;
- per model (workers): consumer lag (``rdv_kafka_consumer_lag`` of the model's group),
  requests in the model now, scores ok/error/skipped, batch fill (mean batch over
  ``batch.max_size``), the latest batch's deadline budget and oldest wait;
- per consumer group: lag and the partitions reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from services.cli.topmetrics import Key, Snapshot, buckets, extreme, increase, quantile, total

MODEL_GROUP = "rdv.model."
"""A model's consumer group is ``<topic prefix>rdv.model.<name>`` (ModelSpec.group_id)."""
WORKER_SERVICE = "worker."
"""A worker's loop is the service ``worker.<name>`` (services.workers.service)."""
DEADLINE_MISSED = "deadline_exceeded"


@dataclass(frozen=True)
class Answers:
    """The rendezvous's decisions of one endpoint for one model and reason."""

    model: str
    reason: str
    count: int
    per_s: float


@dataclass(frozen=True)
class EndpointFigures:
    endpoint: str
    requests: int  # answered by the gateways, any status
    requests_per_s: float
    statuses: dict[str, int]
    answers: list[Answers]
    deadline_misses: int
    deadline_misses_per_s: float
    gateway_timeouts: int  # HTTP 504
    p50_ms: float | None  # gateway latency between the snapshots (None: no request)
    p99_ms: float | None
    p50_ms_all: float | None  # since the gateways started
    p99_ms_all: float | None


@dataclass(frozen=True)
class ModelFigures:
    model: str
    lag: int | None  # None: no partition of its group reported (no commit yet)
    in_flight: int | None  # None: the worker does not report it (a generative one)
    scored: int
    scored_per_s: float
    errors: int
    errors_per_s: float
    skipped: int
    skipped_per_s: float
    batch_fill: float | None  # mean batch / max size between the snapshots
    batch_fill_all: float | None  # since the workers started
    deadline_left_s: float | None  # most urgent request of the latest batch, when read
    oldest_wait_s: float | None  # oldest request of the latest batch, when read


@dataclass(frozen=True)
class GroupFigures:
    group: str
    topic: str
    lag: int
    partitions: int


@dataclass(frozen=True)
class TopFigures:
    seconds: float  # between the two snapshots (the longest over processes)
    targets: list[str]  # read both times
    down: dict[str, str]  # not read the second time, and why
    endpoints: list[EndpointFigures]
    models: list[ModelFigures]
    groups: list[GroupFigures]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def figures(before: Snapshot, after: Snapshot) -> TopFigures:
    """Every figure of ``rdv top`` from two snapshots of the same targets."""
    both = sorted(set(before.samples) & set(after.samples))
    seconds = max((after.at[t] - before.at[t] for t in both), default=0.0)
    return TopFigures(
        seconds=round(seconds, 3),
        targets=both,
        down=dict(sorted(after.down.items())),
        endpoints=endpoint_figures(before, after),
        models=model_figures(before, after),
        groups=group_figures(after),
    )


def endpoint_figures(before: Snapshot, after: Snapshot) -> list[EndpointFigures]:
    by_status = total(after, "rdv_gateway_requests_total", ("endpoint", "status"))
    _, request_rates = increase(before, after, "rdv_gateway_requests_total", ("endpoint",))
    by = ("endpoint", "model", "reason")
    answered = total(after, "rdv_rendezvous_decisions_total", by)
    _, answer_rates = increase(before, after, "rdv_rendezvous_decisions_total", by)
    latency = "rdv_gateway_request_latency_seconds"
    window = buckets(before, after, latency, ("endpoint",))
    since_start = buckets(None, after, latency, ("endpoint",))
    names = sorted({k[0] for k in by_status} | {k[0] for k in answered})
    out = []
    for name in names:
        statuses = {s: int(v) for (e, s), v in sorted(by_status.items()) if e == name}
        answers = [
            Answers(model, reason, int(count), _rate(answer_rates, (e, model, reason)))
            for (e, model, reason), count in sorted(answered.items())
            if e == name
        ]
        out.append(
            EndpointFigures(
                endpoint=name,
                requests=sum(statuses.values()),
                requests_per_s=_rate(request_rates, (name,)),
                statuses=statuses,
                answers=answers,
                deadline_misses=sum(a.count for a in answers if a.reason == DEADLINE_MISSED),
                deadline_misses_per_s=round(
                    sum((a.per_s for a in answers if a.reason == DEADLINE_MISSED), 0.0), 3
                ),
                gateway_timeouts=statuses.get("504", 0),
                p50_ms=_ms(quantile(0.5, window.get((name,), []))),
                p99_ms=_ms(quantile(0.99, window.get((name,), []))),
                p50_ms_all=_ms(quantile(0.5, since_start.get((name,), []))),
                p99_ms_all=_ms(quantile(0.99, since_start.get((name,), []))),
            )
        )
    return out


def model_figures(before: Snapshot, after: Snapshot) -> list[ModelFigures]:
    by = ("model",)
    counts = {
        kind: total(after, f"rdv_worker_{kind}_total", by)
        for kind in ("scored", "errors", "skipped")
    }
    rates = {
        kind: increase(before, after, f"rdv_worker_{kind}_total", by)[1]
        for kind in ("scored", "errors", "skipped")
    }
    max_size = extreme(after, "rdv_worker_batch_max_size", by, "max")
    in_flight = total(after, "rdv_worker_in_flight", by)
    left = extreme(after, "rdv_worker_deadline_left_seconds", by, "min")
    waits = extreme(after, "rdv_stream_oldest_wait_seconds", ("service",), "max")
    lags = _lag_by_group(after)
    sizes = "rdv_worker_batch_size"
    window_mean = _means(
        increase(before, after, f"{sizes}_sum", by)[0],
        increase(before, after, f"{sizes}_count", by)[0],
    )
    all_mean = _means(total(after, f"{sizes}_sum", by), total(after, f"{sizes}_count", by))
    names = sorted({k[0] for k in max_size} | {k[0] for c in counts.values() for k in c})
    out = []
    for name in names:
        own = [lag for (group, _t, _p), lag in lags.items() if group.endswith(MODEL_GROUP + name)]
        size = max_size.get((name,))
        wait = waits.get((WORKER_SERVICE + name,))
        out.append(
            ModelFigures(
                model=name,
                lag=int(sum(own)) if own else None,
                in_flight=int(in_flight[(name,)]) if (name,) in in_flight else None,
                scored=int(counts["scored"].get((name,), 0)),
                scored_per_s=_rate(rates["scored"], (name,)),
                errors=int(counts["errors"].get((name,), 0)),
                errors_per_s=_rate(rates["errors"], (name,)),
                skipped=int(counts["skipped"].get((name,), 0)),
                skipped_per_s=_rate(rates["skipped"], (name,)),
                batch_fill=_fill(window_mean.get((name,)), size),
                batch_fill_all=_fill(all_mean.get((name,)), size),
                deadline_left_s=_round(left.get((name,))),
                oldest_wait_s=_round(wait),
            )
        )
    return out


def group_figures(after: Snapshot) -> list[GroupFigures]:
    per_topic: dict[tuple[str, str], list[float]] = {}
    for (group, topic, _partition), lag in _lag_by_group(after).items():
        per_topic.setdefault((group, topic), []).append(lag)
    return [
        GroupFigures(group, topic, int(sum(lags)), len(lags))
        for (group, topic), lags in sorted(per_topic.items())
    ]


def _lag_by_group(snap: Snapshot) -> dict[Key, float]:
    """(group, topic, partition) -> lag; a partition two members report at once (during
    a rebalance) counts once, at the larger figure."""
    return extreme(snap, "rdv_kafka_consumer_lag", ("group", "topic", "partition"), "max")


def _means(sums: dict[Key, float], counts: dict[Key, float]) -> dict[Key, float]:
    """A histogram's mean per group, where it counted anything."""
    return {k: sums.get(k, 0.0) / count for k, count in counts.items() if count > 0}


def _fill(mean: float | None, size: float | None) -> float | None:
    """Mean batch over the largest batch (None when either is unknown)."""
    return None if mean is None or not size else round(mean / size, 3)


def _rate(rates: dict[Key, float], k: Key) -> float:
    return round(rates.get(k, 0.0), 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def endpoint(figs: TopFigures, name: str) -> EndpointFigures:
    """One endpoint's figures (KeyError naming the endpoints there are)."""
    return _one(figs.endpoints, "endpoint", name)


def model(figs: TopFigures, name: str) -> ModelFigures:
    """One model's figures (KeyError naming the models there are)."""
    return _one(figs.models, "model", name)


T = TypeVar("T")


def _one(items: Sequence[T], field: str, name: str) -> T:
    for item in items:
        if getattr(item, field) == name:
            return item
    raise KeyError(f"no {field} {name!r}; there are {[getattr(i, field) for i in items]}")

"""What ``rdv top`` reads besides the services' counters: the loop's oldest wait, the
worker's requests in flight, batch bound and deadline budget (no broker), and the
shipped Prometheus rules and dashboard (they name only metrics the code defines)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import yaml
from prometheus_client import REGISTRY
from pydantic import JsonValue

from services.common.codec import encode
from services.common.kafka import Outbound, Record
from services.common.loop import Context, Inbound, StreamRunner
from services.common.messages import RequestEnvelope
from services.common.spec import parse_inline
from services.workers.runtime import ModelRuntime, Prediction
from services.workers.worker import ModelWorker
from tests.factories import request
from tests.integration.deploy_files import defined_metrics, exposed_names

REPO = Path(__file__).resolve().parents[3]
NOW = 1_700_000_000_000.0


# --- the loop: rdv_stream_oldest_wait_seconds ------------------------------------------


class OneBatchConsumer:
    """Hands out one batch, then nothing."""

    def __init__(self, records: list[Record]) -> None:
        self.pending = records
        self.assignment = frozenset({(r.topic, r.partition) for r in records})

    def subscribe(self, topics: object) -> None:
        pass

    def consume(self, max_records: int, timeout_s: float, linger_s: float = 0.0) -> list[Record]:
        batch, self.pending = self.pending, []
        return batch

    def store_offsets(self, positions: object) -> None:
        pass

    def commit(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoProducer:
    def produce(self, out: Outbound, on_delivery: object) -> None:
        raise AssertionError("nothing is produced here")

    def poll(self, timeout_s: float = 0.0) -> int:
        return 0

    def flush(self, timeout_s: float) -> int:
        return 0


def wait(service: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value(
        "rdv_stream_oldest_wait_seconds", {"service": service, "topic": topic}
    )


def test_the_loop_shows_how_long_the_oldest_record_waited_then_zero_when_idle() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    records = [
        Record("req", 0, 1, b"k", b"v", timestamp_ms=now_ms - 3000),
        Record("req", 1, 7, b"k", b"v", timestamp_ms=now_ms - 1000),
        Record("scores", 0, 4, b"k", b"v", timestamp_ms=now_ms - 500),
        Record("untimed", 0, 1, b"k", b"v", timestamp_ms=-1),  # no timestamp: no figure
    ]
    seen: dict[str, float | None] = {}

    class Look:
        def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
            seen.update({t: wait(service, t) for t in ("req", "scores", "untimed")})

        def tick(self, now_ms: float, ctx: Context) -> None:
            pass

    runner = StreamRunner(
        service=service,
        consumer=OneBatchConsumer(records),  # type: ignore[arg-type]
        producer=NoProducer(),  # type: ignore[arg-type]
        decoders={t: lambda raw: raw for t in ("req", "scores", "untimed")},
        processor=Look(),
        dead_letter_topic="dlq",
    )
    runner.run(idle_timeout_s=0.05)
    req_wait, scores_wait = seen["req"], seen["scores"]
    assert req_wait is not None
    assert 3.0 <= req_wait < 4.0  # the oldest of the topic's batch, however many partitions
    assert scores_wait is not None
    assert 0.5 <= scores_wait < 1.5
    assert seen["untimed"] is None
    assert (wait(service, "req"), wait(service, "scores")) == (0.0, 0.0)  # idle polls since


# --- the worker: in flight, batch bound, deadline budget -------------------------------


class Watching(ModelRuntime):
    """Echoes; notes what its model's in-flight gauge said during each call."""

    def __init__(self, model: str) -> None:
        super().__init__({})
        self.model = model
        self.in_flight: list[float | None] = []

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        value = REGISTRY.get_sample_value("rdv_worker_in_flight", {"model": self.model})
        self.in_flight.append(value)
        return list(payloads)


def inbound(endpoint: str, deadline_epoch_ms: float) -> Inbound:
    base = request({"x": 1}, endpoint=endpoint)
    env = RequestEnvelope.model_validate(
        {
            **base.model_dump(),
            "created_ms": int(NOW) - 60_000,
            "deadline_ms": int(deadline_epoch_ms),
        }
    )
    return Inbound(Record("rdv.requests", 0, 1, b"k", encode(env)), env)


def test_the_worker_shows_in_flight_batch_bound_and_the_tightest_budget() -> None:
    name = f"m{uuid.uuid4().hex[:8]}"
    spec = parse_inline(f"echo:name={name},role=champion,endpoints=demo,max_size=16")
    runtime = Watching(name)
    worker = ModelWorker(spec, runtime, "scores", clock=lambda: NOW)

    def gauge(metric: str) -> float | None:
        return REGISTRY.get_sample_value(metric, {"model": name})

    assert gauge("rdv_worker_batch_max_size") == 16.0
    batch = [
        inbound("demo", NOW + 2000),
        inbound("demo", NOW + 450),
        inbound("demo", NOW + 900),
        inbound("other", NOW - 5000),  # another endpoint's: not this model's budget
    ]
    worker.process(batch, Context())
    assert runtime.in_flight == [3.0]  # the three demo requests, during the call
    assert gauge("rdv_worker_in_flight") == 0.0
    assert gauge("rdv_worker_deadline_left_seconds") == 0.45
    worker.process([inbound("demo", NOW - 250)], Context())  # expired: skipped, not predicted
    assert gauge("rdv_worker_deadline_left_seconds") == -0.25
    assert runtime.in_flight == [3.0]


# --- the shipped Prometheus rules and Grafana dashboard --------------------------------


def test_the_prometheus_config_loads_the_rules_file_compose_mounts() -> None:
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(
        str(v).rsplit(":", 1)[0].split(":", 1)
        for v in compose["services"]["prometheus"]["volumes"]
        if str(v).startswith("./")
    )
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]
    assert mounts["./deploy/prometheus/rules.yml"] == "/etc/prometheus/rules.yml"


def test_the_recording_rules_are_well_formed_and_read_defined_metrics() -> None:
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    known = exposed_names(defined_metrics())
    recorded = set()
    for group in rules["groups"]:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) == {"record", "expr"}, rule
            assert rule["record"].startswith("rdv:")  # the level:metric:operations form
            assert rule["record"].count(":") == 2, rule["record"]
            _balanced(rule["expr"])
            used = set(_metric_names(rule["expr"]))
            assert used, rule
            assert used <= known, f"{rule['record']} reads undefined {used - known}"
            recorded.add(rule["record"])
    assert {"rdv:kafka_consumer_lag:sum", "rdv:worker_batch_fill:ratio_rate1m"} <= recorded
    assert "rdv_kafka_consumer_lag" in known  # found by the same grep as the others


def test_the_dashboard_shows_the_saturation_figures() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/rendezvous.json").read_text())
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"]}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for expr in exprs:
        _balanced(expr)
        for name in _recorded_names(expr):
            assert name in recorded, f"the dashboard reads {name}, which no rule records"
    text = " ".join(exprs)
    for needed in (
        "rdv:kafka_consumer_lag:sum",
        "rdv_stream_oldest_wait_seconds",
        "rdv_worker_deadline_left_seconds",
        "rdv_worker_in_flight",
        "rdv:worker_batch_fill:ratio_rate1m",
    ):
        assert needed in text, f"the dashboard lacks {needed}"


def _metric_names(expr: str) -> list[str]:
    return re.findall(r"\brdv_\w+", expr)


def _recorded_names(expr: str) -> list[str]:
    return re.findall(r"\brdv:[\w:]+", expr)


def _balanced(expr: str) -> None:
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1}.get(char, 0)
        assert depth >= 0, expr
    assert depth == 0, expr

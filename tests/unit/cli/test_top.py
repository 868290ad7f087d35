"""``rdv top``'s figures from two snapshots of /metrics text, as prometheus_client writes
it for the services' metrics (same names and labels, private registries), and its
command line: targets, --once --json against a served /metrics."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.cli import top
from services.cli.main import build_parser, main
from services.cli.topfigures import MODEL_GROUP, endpoint, figures, model
from services.cli.topmetrics import Scrape, Snapshot, buckets, increase, quantile
from services.common.errors import ConfigError
from services.common.spec import parse_inline

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Gateway:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rdv_gateway_requests", "r", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "rdv_gateway_request_latency_seconds",
            "l",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def answer(self, endpoint: str, status: str, seconds: float, times: int = 1) -> None:
        for _ in range(times):
            self.requests.labels(endpoint, status).inc()
            self.latency.labels(endpoint).observe(seconds)


class Rendezvous:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "rdv_rendezvous_decisions",
            "d",
            ["endpoint", "model", "reason"],
            registry=self.registry,
        )


class Worker:
    def __init__(self, name: str, max_size: int, group: str) -> None:
        self.name = name
        self.registry = r = CollectorRegistry()
        self.scored = Counter("rdv_worker_scored", "s", ["model"], registry=r)
        self.errors = Counter("rdv_worker_errors", "e", ["model"], registry=r)
        self.skipped = Counter("rdv_worker_skipped", "k", ["model"], registry=r)
        self.batch = Histogram(
            "rdv_worker_batch_size", "b", ["model"], buckets=(1, 2, 4, 8, 16, 32), registry=r
        )
        Gauge("rdv_worker_batch_max_size", "m", ["model"], registry=r).labels(name).set(max_size)
        self.in_flight = Gauge("rdv_worker_in_flight", "i", ["model"], registry=r)
        self.left = Gauge("rdv_worker_deadline_left_seconds", "d", ["model"], registry=r)
        self.wait = Gauge("rdv_stream_oldest_wait_seconds", "w", ["service", "topic"], registry=r)
        self.lag = Gauge("rdv_kafka_consumer_lag", "l", ["group", "topic", "partition"], registry=r)
        self.group = group
        for kind in (self.scored, self.errors, self.skipped):
            kind.labels(name)  # the worker's counters exist from the start

    def score(self, batches: list[int], errors: int = 0) -> None:
        for size in batches:
            self.batch.labels(self.name).observe(size)
        self.scored.labels(self.name).inc(sum(batches) - errors)
        self.errors.labels(self.name).inc(errors)


def snap(at: float, **registries: CollectorRegistry | None) -> Snapshot:
    return Snapshot.of(
        [
            Scrape(name, at, None, "connection refused")
            if reg is None
            else Scrape(name, at, generate_latest(reg).decode())
            for name, reg in registries.items()
        ]
    )


@pytest.fixture
def platform() -> tuple[Gateway, Rendezvous, Rendezvous, Worker, Worker]:
    return (
        Gateway(),
        Rendezvous(),
        Rendezvous(),
        Worker("fast", 8, "t1.rdv.model.fast"),
        Worker("slow", 4, "t1.rdv.model.slow"),
    )


def test_two_snapshots_give_counts_rates_answers_and_quantiles(
    platform: tuple[Gateway, Rendezvous, Rendezvous, Worker, Worker],
) -> None:
    gw, rdv1, rdv2, fast, slow = platform
    gw.answer("demo", "200", 0.02, times=10)
    rdv1.decisions.labels("demo", "fast", "champion_in_time").inc(10)
    fast.score([4, 4, 2])
    slow.score([4, 4, 2])
    regs = {
        "gateway": gw.registry,
        "rendezvous-1": rdv1.registry,
        "rendezvous-2": rdv2.registry,
        "fast": fast.registry,
        "slow": slow.registry,
    }
    before = snap(100.0, **regs)
    # two seconds of known traffic: 40 answered (30 by fast, 6 by slow, 4 missed), 2 timed out
    gw.answer("demo", "200", 0.04, times=36)
    gw.answer("demo", "504", 0.9, times=4)
    gw.answer("demo", "504", 5.0, times=2)
    rdv1.decisions.labels("demo", "fast", "champion_in_time").inc(20)
    rdv2.decisions.labels("demo", "fast", "champion_in_time").inc(10)
    rdv2.decisions.labels("demo", "slow", "fallback:1").inc(6)
    rdv2.decisions.labels("demo", "-", "deadline_exceeded").inc(4)
    fast.score([8, 8, 8, 8, 8], errors=1)
    slow.score([2, 2])
    fast.in_flight.labels("fast").set(3)
    fast.left.labels("fast").set(0.25)
    fast.wait.labels("worker.fast", "t1.rdv.requests").set(0.5)
    for partition, lag in enumerate((3, 0, 2, 0)):
        fast.lag.labels(fast.group, "t1.rdv.requests", str(partition)).set(lag)
        slow.lag.labels(slow.group, "t1.rdv.requests", str(partition)).set(0)
    after = snap(102.0, **regs)

    figs = figures(before, after)

    assert figs.seconds == 2.0
    assert figs.down == {}
    demo = endpoint(figs, "demo")
    assert demo.requests == 52
    assert demo.statuses == {"200": 46, "504": 6}
    assert demo.requests_per_s == 21.0  # 42 in 2 s
    assert demo.gateway_timeouts == 6
    answers = {(a.model, a.reason): (a.count, a.per_s) for a in demo.answers}
    assert answers == {
        ("fast", "champion_in_time"): (40, 15.0),  # two replicas summed
        ("slow", "fallback:1"): (6, 3.0),
        ("-", "deadline_exceeded"): (4, 2.0),
    }
    assert (demo.deadline_misses, demo.deadline_misses_per_s) == (4, 2.0)
    # in the window: 36 at 40 ms, 4 at 0.9 s, 2 at 5 s -> p50 in (0.025, 0.05]
    assert demo.p50_ms is not None
    assert 25.0 < demo.p50_ms <= 50.0
    # rank 0.99 * 42 = 41.58: 1.58 of the 2 in (2.5, 5], interpolated
    assert demo.p99_ms == pytest.approx(2500.0 + 2500.0 * 1.58 / 2)
    assert demo.p50_ms_all is not None
    assert demo.p50_ms_all <= 50.0

    f = model(figs, "fast")
    assert (f.scored, f.errors, f.skipped) == (49, 1, 0)
    assert (f.scored_per_s, f.errors_per_s) == (19.5, 0.5)
    assert f.batch_fill == 1.0  # every batch of the window was full (8 of 8)
    assert f.batch_fill_all == pytest.approx(50 / 8 / 8, abs=0.001)
    assert (f.lag, f.in_flight, f.deadline_left_s, f.oldest_wait_s) == (5, 3, 0.25, 0.5)
    s = model(figs, "slow")
    assert (s.lag, s.batch_fill, s.scored_per_s) == (0, 0.5, 2.0)
    assert s.in_flight is None  # its gauge was never set: the worker does not report it
    groups = {(g.group, g.topic): (g.lag, g.partitions) for g in figs.groups}
    assert groups == {
        ("t1.rdv.model.fast", "t1.rdv.requests"): (5, 4),
        ("t1.rdv.model.slow", "t1.rdv.requests"): (0, 4),
    }
    json.dumps(figs.as_json())  # serialisable as it is


def test_a_restarted_process_counts_from_zero_and_one_read_once_counts_nothing(
    platform: tuple[Gateway, Rendezvous, Rendezvous, Worker, Worker],
) -> None:
    gw, rdv1, _, fast, _ = platform
    gw.answer("demo", "200", 0.01, times=50)
    before = snap(10.0, gateway=gw.registry, fast=None)
    restarted = Gateway()
    restarted.answer("demo", "200", 0.01, times=5)  # a lower count: it began again from 0
    rdv1.decisions.labels("demo", "fast", "champion_in_time").inc(7)
    fast.score([1])
    after = snap(11.0, gateway=restarted.registry, fast=fast.registry, rendezvous=rdv1.registry)
    figs = figures(before, after)
    demo = endpoint(figs, "demo")
    assert demo.requests_per_s == 5.0
    assert [(a.count, a.per_s) for a in demo.answers] == [(7, 0.0)]  # rendezvous read once
    assert model(figs, "fast").scored_per_s == 0.0
    assert figs.targets == ["gateway"]


def test_an_unreachable_target_is_listed_as_down() -> None:
    figs = figures(snap(0.0, gateway=None), snap(1.0, gateway=None))
    assert figs.down == {"gateway": "connection refused"}
    assert (figs.endpoints, figs.models, figs.groups) == ([], [], [])
    broken = Snapshot.of([Scrape("x", 0.0, "this is { not prometheus")])
    assert "x" in broken.down
    assert broken.samples == {}


def test_quantiles_interpolate_inside_the_bucket_as_prometheus_does() -> None:
    cumulative = [(0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, cumulative) == pytest.approx(0.1)
    assert quantile(0.7, cumulative) == pytest.approx(0.15)
    assert quantile(0.25, cumulative) == pytest.approx(0.05)  # the first bucket starts at 0
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.99, [(1.0, 1.0), (math.inf, 10.0)]) == 1.0  # in +Inf: largest bound
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile(1.5, cumulative)


def test_increase_and_buckets_sum_over_processes() -> None:
    a, b = Gateway(), Gateway()
    before = snap(0.0, a=a.registry, b=b.registry)
    a.answer("x", "200", 0.007, times=3)
    b.answer("x", "200", 0.2, times=1)
    after = snap(4.0, a=a.registry, b=b.registry)
    grown, rates = increase(before, after, "rdv_gateway_requests_total", ("endpoint",))
    assert (grown, rates) == ({("x",): 4.0}, {("x",): 1.0})
    window = buckets(before, after, "rdv_gateway_request_latency_seconds", ("endpoint",))
    counts = dict(window[("x",)])
    assert (counts[0.01], counts[math.inf]) == (3.0, 4.0)


def test_the_model_group_prefix_is_the_specs() -> None:
    spec = parse_inline("echo:name=fast,role=champion,endpoints=demo")
    assert spec.group_id == MODEL_GROUP + "fast"


# --- the command line ------------------------------------------------------------------


def test_the_parser_reads_tops_options() -> None:
    args = build_parser().parse_args(["top"])
    assert (args.run, args.once, args.json, args.interval, args.target) == (
        "top:run",
        False,
        False,
        1.0,
        None,
    )
    assert args.stack.name == "stack.yaml"
    args = build_parser().parse_args(
        ["top", "--once", "--json", "--interval", "0.5", "--target", "gw=http://h:1"]
    )
    assert (args.once, args.json, args.interval, args.target) == (
        True,
        True,
        0.5,
        ["gw=http://h:1"],
    )
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["top", "--interval", bad])


def test_targets_come_from_the_stack_file_or_the_options(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        "processes:\n"
        "  - {name: gateway, command: [python, -m, services.gateway], "
        "ready: 'http://127.0.0.1:8080/readyz'}\n"
        "  - {name: fast, command: [python, -m, services.workers], "
        "ready: 'http://127.0.0.1:9301/readyz'}\n"
    )
    assert top.targets(None, stack) == {
        "gateway": "http://127.0.0.1:8080/metrics",
        "fast": "http://127.0.0.1:9301/metrics",
    }
    assert top.targets(["a=http://h:1", "b=http://h:2/custom"], stack) == {
        "a": "http://h:1/metrics",
        "b": "http://h:2/custom",
    }
    for bad in (["nourl"], ["a=ftp://h/x"], ["=http://h:1"], ["a=http://h:1", "a=http://h:2"]):
        with pytest.raises(ConfigError, match="--target"):
            top.targets(bad, stack)


@pytest.fixture
def served() -> Iterator[tuple[str, Gateway]]:
    """A /metrics server with a gateway's metrics."""
    gw = Gateway()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(gw.registry)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", gw
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_once_json_prints_the_figures_of_the_served_metrics(
    served: tuple[str, Gateway], capsys: pytest.CaptureFixture[str]
) -> None:
    url, gw = served
    gw.answer("demo", "200", 0.03, times=3)
    closed = "http://127.0.0.1:1"
    options = ["--interval", "0.05", "--target", f"gw={url}", "--target", f"gone={closed}"]
    code = main(["top", "--once", "--json", *options])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["targets"] == ["gw"]
    assert "gone" in out["down"]
    (demo,) = out["endpoints"]
    assert (demo["endpoint"], demo["requests"], demo["requests_per_s"]) == ("demo", 3, 0.0)
    assert demo["p50_ms"] is None  # nothing answered between the two reads
    assert 25.0 < demo["p50_ms_all"] <= 50.0


def test_once_prints_a_table(
    served: tuple[str, Gateway], capsys: pytest.CaptureFixture[str]
) -> None:
    url, gw = served
    gw.answer("demo", "200", 0.03)
    assert main(["top", "--once", "--interval", "0.05", "--target", f"gw={url}"]) == 0
    out = capsys.readouterr().out
    for shown in ("endpoints", "demo", "req/s", "p99 ms"):
        assert shown in out
    assert "models" not in out  # no worker was read


def test_no_process_answering_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["top", "--once", "--target", "gw=http://127.0.0.1:1"]) == 2
    assert "no process answered" in capsys.readouterr().err

"""Cost cuts, each measured against the settings as issue 12 was filed, in the same run:
the stream_overhead stack (broker, gateway, rendezvous, three echo models: champion,
challenger and a canary) at one steady rate, once per variant, each variant on a fresh
stack whose broker JVM is warmed first; the first variant runs again at the end to show
how far the machine drifted meanwhile. The broker variants and the capacity variants
(run them with ``--only``) try other broker settings, or add worker processes to show
how the cost grows with models and endpoints.

    python -m bench.cost_cuts                 # about 23 minutes
    python -m bench.cost_cuts --quick         # a smoke run
    python -m bench.cost_cuts --only "+ co-hosted models" --only "capacity: ..."

Per variant: CPU-ms, Kafka requests and context switches per request of each process
and in total (bench.cost), p50 and p99 latency, and the stack's idle CPU (ms per second
over 15 s without load, after the load windows). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field

from bench.chaos_report import cpu_times, machine
from bench.cost import STATS_INTERVAL_MS, idle_cpu
from bench.loadgen import summary
from bench.stack import ECHO_MODELS, POLICY, BenchStack
from bench.stream_overhead import costed, warm_up


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    jvm: list[str] | None = None
    cohost: bool = False  # the three models in one worker process (services.workers.cohost)
    broker: dict[str, str] | None = None  # broker properties over LocalBroker's
    extra: dict[str, str] = field(default_factory=dict)  # more models, a process each


OLD_WAKEUPS = {
    "RDV_WORKER_IDLE_POLL_MS": "20",
    "RDV_GATEWAY_REPLY_POLL_MS": "10",
    "RDV_GATEWAY_LOOP_LAG_INTERVAL_MS": "5",
}
"""The idle wake-ups before this change: workers every 20 ms, the gateway's reply
thread every 10 ms and its loop-lag timer every 5 ms."""
OLD_READERS = {"RDV_KAFKA_CLIENT_CONFIG": json.dumps({"fetch.wait.max.ms": "100"})}
"""Every consumer's fetch held at most 100 ms, as before the control followers and the
gateway's reply reader got a 1 s bound (kafka.config.assigned_reader); the group
members' 100 ms bound is unchanged."""
OLD_LINGER = {"RDV_WORKER_COHOST_LINGER_MS": "0"}
"""A co-hosted set's scores sent one by one, as before they were sent together."""
OLD_REQUESTS = {"RDV_RENDEZVOUS_REQUEST_READ_INTERVAL_MS": "0", **OLD_LINGER}
"""Every request read by the rendezvous as soon as it arrives, as before scores carried
a copy of their request (and scores sent at once)."""
OLD_DECISIONS = {"RDV_RENDEZVOUS_DECISION_LINGER_MS": "0", **OLD_REQUESTS}
"""Decisions sent at once with the replies, as before the rendezvous's decision lane
(and every request read at once)."""
TODAY = Variant(
    "issue filed",
    {"RDV_WORKER_OFF_PATH_WAIT_MS": "0", **OLD_WAKEUPS, **OLD_READERS, **OLD_DECISIONS},
)
LINGER = {"RDV_KAFKA_CLIENT_CONFIG": json.dumps({"linger.ms": "1"})}
VARIANTS = (
    TODAY,
    Variant("canary reads in batches", {**OLD_WAKEUPS, **OLD_READERS, **OLD_DECISIONS}),
    Variant("+ fewer idle wake-ups", {**OLD_READERS, **OLD_DECISIONS}),
    Variant("+ co-hosted models", {**OLD_READERS, **OLD_DECISIONS}, cohost=True),
    Variant("+ assigned readers wait 1 s", OLD_DECISIONS, cohost=True),
    Variant("+ producers linger 1 ms", LINGER | OLD_DECISIONS, cohost=True),
    Variant(
        "co-hosted, broker 1+1 threads",
        OLD_DECISIONS,
        cohost=True,
        broker={"num.network.threads": "1", "num.io.threads": "1"},
    ),
    Variant("+ decisions lane 500 ms", OLD_REQUESTS, cohost=True),
    Variant("+ requests read every 100 ms", OLD_LINGER, cohost=True),
    Variant("+ co-hosted scores sent together", {}, cohost=True),
)
BROKER = (
    Variant(
        "co-hosted, broker no-op records every 5 s",
        {},
        cohost=True,
        broker={"metadata.max.idle.interval.ms": "5000"},
    ),
    Variant("co-hosted, broker serial GC", {}, jvm=["-XX:+UseSerialGC"], cohost=True),
    Variant("co-hosted, broker parallel GC", {}, jvm=["-XX:+UseParallelGC"], cohost=True),
    Variant(
        "co-hosted, broker G1, 1 GC + 2 JIT threads",
        {},
        jvm=[
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:ParallelGCThreads=1",
            "-XX:ConcGCThreads=1",
            "-XX:CICompilerCount=2",
        ],
        cohost=True,
    ),
)
"""The broker's settings tried on the co-hosted stack: its controller's no-op metadata
records every 5 s instead of Kafka's 500 ms (an idle broker's work), and its JVM
(LocalBroker's default: G1 with a 20 ms pause goal) with other collectors or fewer GC
and compiler threads on a two-core machine."""
OTHER = {
    f"other{i}": f"echo:name=other{i},role=challenger,endpoints=other,latency_ms=0"
    for i in range(3)
}
MORE = {
    f"more{i}": f"echo:name=more{i},role=challenger,endpoints=bench,latency_ms=0" for i in range(3)
}
CAPACITY = (
    Variant("capacity: + 3 models of another endpoint", {}, cohost=True, extra=OTHER),
    Variant("capacity: + 3 more models of this one", {}, cohost=True, extra=MORE),
)
"""How the cost grows: with the three bench models co-hosted, three more worker
processes that read every request but serve another endpoint (they score nothing),
or three more that score every request (challengers outside the policy)."""


def run_variant(
    variant: Variant,
    rate: float,
    seconds: float,
    repeats: int,
    warm_s: tuple[float, float],
    idle_s: float,
) -> dict:
    with BenchStack(
        POLICY, env=variant.env, jvm_options=variant.jvm, broker_props=variant.broker
    ) as stack:
        stack.start_workers(ECHO_MODELS, cohost=variant.cohost)
        stack.start_workers(variant.extra)
        stack.start_front()
        meter = stack.meter()
        warm_up(meter, stack.gateway_port, *warm_s)
        runs = [costed(meter, stack.gateway_port, rate, seconds) for _ in range(repeats)]
        idle = idle_cpu(meter, idle_s)
    sums = [summary(r) for r, _ in runs]
    costs = [c for _, c in runs]
    row = {
        "variant": variant.name,
        "p50": statistics.median(s["p50"] for s in sums),
        "p99": statistics.median(s["p99"] for s in sums),
        "ok_share": min(s["ok_share"] for s in sums),
        "cpu_ms": _median(costs, "cpu_ms"),
        "kafka_requests": _median(costs, "kafka_requests"),
        "kafka_requests_by_process": _median(costs, "kafka_requests_by_process"),
        "context_switches": _median(costs, "context_switches"),
        "idle_cpu_ms_per_s": idle,
    }
    print(
        f"{variant.name:<30} CPU {row['cpu_ms']['total']:6.2f} ms/req "
        f"(broker {row['cpu_ms'].get('broker', float('nan')):5.2f})  "
        f"Kafka {row['kafka_requests']['total']:5.2f} req/req  "
        f"switches {row['context_switches']['total']:5.1f}/req  "
        f"p50 {row['p50']:6.2f}  p99 {row['p99']:7.2f} ms  ok {row['ok_share']:.3f}  "
        f"idle {idle['total']:5.1f} CPU-ms/s (broker {idle.get('broker', float('nan')):4.1f})",
        flush=True,
    )
    return row


def _median(costs: list[dict], part: str) -> dict[str, float]:
    keys = sorted({k for c in costs for k in c[part]})
    return {k: round(statistics.median(c[part].get(k, 0.0) for c in costs), 3) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost_cuts")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--rate", type=float, default=100.0)
    names = [v.name for v in (*VARIANTS, *BROKER, *CAPACITY)]
    parser.add_argument(
        "--only",
        action="append",
        choices=names,
        metavar="NAME",
        help=f"run these variants, in this order (repeatable; default all): {names}",
    )
    args = parser.parse_args(argv)
    seconds, repeats, warm_s = (4.0, 1, (5.0, 10.0)) if args.quick else (10.0, 3, (45.0, 150.0))
    idle_s = 4.0 if args.quick else 15.0
    steal0 = cpu_times()
    print("machine:", json.dumps(machine()), flush=True)
    chosen = (
        [next(v for v in (*VARIANTS, *BROKER, *CAPACITY) if v.name == n) for n in args.only]
        if args.only
        else [*VARIANTS, TODAY]
    )
    rows = [run_variant(v, args.rate, seconds, repeats, warm_s, idle_s) for v in chosen]
    out = {
        "rate": args.rate,
        "seconds": seconds,
        "repeats": repeats,
        "kafka_stats_interval_ms": STATS_INTERVAL_MS,
        "variants": rows,
        "machine": machine(steal0),
    }
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

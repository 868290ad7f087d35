"""What the stream path costs: the full local stack (real Kafka broker, gateway,
rendezvous, three echo models, each its own process) against an in-process baseline
(the same echo model inside a FastAPI handler), under open-loop load.

    python -m bench.stream_overhead            # about 3 minutes
    python -m bench.stream_overhead --quick    # a smoke run, about 1 minute

Reports the latency the stream path adds at 200 req/s (p50, p99, p99.9), the highest
rate held with p99 under 100 ms, where the time goes (per hop, from the records'
own timestamps), and the share of answers within deadline + 10 ms with a champion
slow on 20% of requests and at twice the sustainable rate. The last line printed is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.loadgen import Run, measure, quantile, summary
from bench.stack import BODY, DEADLINE_MS, ECHO, ECHO_MODELS, POLICY, BenchStack, free_port
from services.devstack.stack import ProcessSpec, start, stop

SLOW_CHAMP = (
    "latency:name=champ,role=champion,endpoints=bench,latency_ms=0,"
    "slow_share=0.2,slow_ms=400,seed=7"
)


def within(run: Run, slack_ms: float) -> float:
    """Share of all requests answered (any status) within the deadline + slack."""
    good = sum(1 for r in run.results if r.status and r.latency_ms <= DEADLINE_MS + slack_ms)
    return good / max(len(run.results), 1)


def line(name: str, run: Run) -> str:
    s = summary(run)
    return (
        f"{name:<28} rate {run.rate:>6.0f}/s  n {len(run.results):>6}  "
        f"p50 {s['p50']:7.2f}  p99 {s['p99']:7.2f}  p99.9 {s['p999']:7.2f} ms  "
        f"statuses {run.statuses()}"
    )


@contextmanager
def baseline_server() -> Iterator[int]:
    port = free_port()
    spec = ProcessSpec(
        name="baseline",
        command=["python", "-m", "bench.baseline_server", "--port", str(port)],
        ready=f"http://127.0.0.1:{port}/readyz",
    )
    with tempfile.TemporaryDirectory() as run_dir:
        start(spec, dict(os.environ), Path(run_dir))
        try:
            yield port
        finally:
            stop(spec, Path(run_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_overhead")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    args = parser.parse_args(argv)
    dur = 4.0 if args.quick else 10.0
    repeats = 1 if args.quick else 3
    step_dur = 3.0 if args.quick else 5.0
    rates = [200, 400, 600] if args.quick else [200, 300, 400, 500, 600, 800, 1000, 1200]
    out: dict[str, object] = {
        "deadline_ms": DEADLINE_MS,
        "quick": args.quick,
        "gateway_max_in_flight": 256,  # other gateway settings: their defaults
        "repeats_at_200": repeats,
    }

    with (
        baseline_server() as base_port,
        BenchStack(POLICY, max_in_flight=256) as stack,
    ):
        stack.start_workers(ECHO_MODELS)
        stack.start_front()
        gw = stack.gateway_port
        for port in (base_port, gw):  # warm both (connections, caches, consumer groups)
            measure("127.0.0.1", port, "/v1/infer/bench", BODY, rate=200, duration_s=2)

        # baseline and stream alternate, `repeats` times: each quantile is the median
        # over the repeats, so one noisy moment on a shared machine does not decide it
        bases, streams, hops = [], [], []
        for _ in range(repeats):
            bases.append(
                measure("127.0.0.1", base_port, "/v1/infer/bench", BODY, rate=200, duration_s=dur)
            )
            mark = stack.clock_mark()
            streams.append(
                measure("127.0.0.1", gw, "/v1/infer/bench", BODY, rate=200, duration_s=dur)
            )
            hops.append(stack.hops(since_ms=mark))
            print(line("baseline (in-process)", bases[-1]))
            print(line("stream (full stack)", streams[-1]))
        b, s = _median_summary(bases), _median_summary(streams)
        out["baseline_200"] = b
        out["stream_200"] = s
        out["added_ms"] = {k: s[k] - b[k] for k in ("p50", "p99", "p999")}
        out["hops_ms"] = {k: statistics.median(h[k] for h in hops) for k in hops[0]}
        print("where the time goes (medians, ms):", json.dumps(out["hops_ms"]))

        best = 0.0
        steps = []
        for rate in rates:
            run = measure("127.0.0.1", gw, "/v1/infer/bench", BODY, rate=rate, duration_s=step_dur)
            s = summary(run)
            held = s["ok_share"] == 1.0 and s["p99"] < 100
            steps.append({"rate": rate, **s, "held": held})
            print(line(f"step {'held' if held else 'NOT held'}", run))
            if held:
                best = float(rate)
            elif best:
                break
        out["steps"] = steps
        out["max_rate_p99_under_100ms"] = best

        stack.start_workers({"champ": SLOW_CHAMP})
        slow = measure("127.0.0.1", gw, "/v1/infer/bench", BODY, rate=200, duration_s=dur)
        print(line("slow champion (20%)", slow))
        out["slow_champion_200"] = {
            "within_deadline_10ms": within(slow, 10),
            "within_deadline_50ms": within(slow, 50),
            "models": _models(slow),
            **summary(slow),
        }

        stack.start_workers({"champ": ECHO.format(name="champ", role="champion")})
        over_rate = max(2 * best, 400.0)
        over = measure("127.0.0.1", gw, "/v1/infer/bench", BODY, rate=over_rate, duration_s=dur)
        print(line("twice capacity", over))
        shed = [r.latency_ms for r in over.results if r.status == 503]
        out["twice_capacity"] = {
            "rate": over_rate,
            "statuses": {str(k): v for k, v in over.statuses().items()},
            "within_deadline_10ms": within(over, 10),
            "within_deadline_50ms": within(over, 50),
            "shed_p99_ms": quantile(shed, 0.99),
            **summary(over),
        }
    print(json.dumps(out, default=str))
    return 0


def _median_summary(runs: list[Run]) -> dict[str, float]:
    sums = [summary(r) for r in runs]
    return {k: statistics.median(x[k] for x in sums) for k in sums[0]}


def _models(run: Run) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in run.results:
        out[r.model or "-"] = out.get(r.model or "-", 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main())

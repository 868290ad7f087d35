"""The local stack that `make up` starts, under open-loop load on `/v1/infer/demo`,
against the in-process baseline (bench.baseline_server) in the same run:
``python -m bench.make_up_load`` (start the stack first with `make up`).

Both get the same rate (``--rate``, 100 req/s) from bench.loadgen, alternating
``--repeats`` windows of ``--seconds`` after a warm-up of each; for each window: p50 and
p99 from each request's scheduled time, the share answered 200, and the CPU-ms per
request over every process of the stack (from /proc: the pids in .rdv/run and the
broker) or of the baseline. The idle stack's CPU is measured first, in all and by
process (``--settle`` seconds after the start, over ``--idle-seconds``). The machine is
printed beside the figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.chaos_report import cpu_times, machine
from bench.cost import CostMeter, cpu_ms, idle_cpu
from bench.loadgen import measure, summary
from bench.stack import BODY
from bench.stream_overhead import baseline_server
from services.devstack.broker import LocalBroker

RUN_DIR = Path(".rdv/run")


def stack_pids(kafka_port: int) -> dict[str, int]:
    """Every process of the running local stack, its broker included."""
    pids = {
        path.stem: int(path.read_text().split()[0])
        for path in RUN_DIR.glob("*.pid")
        if path.stem != "supervisor"
    }
    broker = LocalBroker(port=kafka_port).pid()
    if not pids or broker is None:
        raise SystemExit("no local stack is running here: start it with `make up`")
    pids["broker"] = broker
    return pids


def window(port: int, pids: dict[str, int], rate: float, seconds: float) -> dict[str, float]:
    before = sum(cpu_ms(p) for p in pids.values())
    run = measure("127.0.0.1", port, "/v1/infer/demo", BODY, rate=rate, duration_s=seconds)
    spent = sum(cpu_ms(p) for p in pids.values()) - before
    s = summary(run)
    n = max(len(run.results), 1)
    return {"p50": s["p50"], "p99": s["p99"], "ok_share": s["ok_share"], "cpu_ms": spent / n}


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, above zero (or zero if allowed)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"seconds must be {bound}, not {text!r}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.make_up_load")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=8080, help="the stack's gateway")
    parser.add_argument("--kafka-port", type=int, default=9092, help="the stack's broker")
    parser.add_argument(
        "--settle",
        type=_seconds(allow_zero=True),
        default=0.0,
        help="seconds to wait before the idle window (a fresh broker compiles for a minute)",
    )
    parser.add_argument(
        "--idle-seconds", type=_seconds(allow_zero=False), default=10.0, help="the idle window"
    )
    args = parser.parse_args(argv)
    steal0 = cpu_times()
    print("machine:", json.dumps(machine()), flush=True)
    pids = stack_pids(args.kafka_port)
    time.sleep(args.settle)  # nothing to wait on: the JIT just needs the time
    per = idle_cpu(CostMeter(pids, {}), args.idle_seconds)
    idle = per.pop("total") / 1000 * 100
    print(f"idle stack: {idle:.1f}% of a core ({len(pids)} processes)", flush=True)
    print("idle CPU-ms per second by process:", json.dumps(per), flush=True)
    out: dict[str, object] = {
        "rate": args.rate,
        "idle_pct_of_core": idle,
        "idle_cpu_ms_per_s": per,
        "windows": [],
    }
    with baseline_server() as (base_port, base_pid):
        window(args.port, pids, args.rate, 30.0)  # warm-up
        window(base_port, {"baseline": base_pid}, args.rate, 10.0)
        for i in range(args.repeats):
            stack = window(args.port, pids, args.rate, args.seconds)
            base = window(base_port, {"baseline": base_pid}, args.rate, args.seconds)
            out["windows"].append({"stack": stack, "baseline": base})  # type: ignore[union-attr]
            print(
                f"window {i}: stack p50 {stack['p50']:.1f} p99 {stack['p99']:.1f} ms "
                f"ok {stack['ok_share']:.4f} cpu {stack['cpu_ms']:.2f} ms/req | baseline "
                f"p50 {base['p50']:.1f} p99 {base['p99']:.1f} ms cpu {base['cpu_ms']:.2f} "
                f"ms/req | cpu x{stack['cpu_ms'] / max(base['cpu_ms'], 1e-9):.1f}",
                flush=True,
            )
    out["machine"] = machine(steal0)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

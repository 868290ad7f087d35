"""Where the CPU goes: each process's share of one core while the full stack serves a
steady open-loop load (the stream_overhead stack and endpoint).

    python -m bench.cpu_share --rate 400

Reads utime+stime from /proc for 5 s in the middle of a 10 s run. The load generator
runs in this process and is not counted. No baseline is measured: the shares show where
the CPU goes, docs/benchmarks.md quotes them as investigation notes, not as results."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

from bench.loadgen import measure
from bench.stack import BODY, ECHO_MODELS, POLICY, BenchStack

CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of /proc/<pid>/stat's utime and stime


def cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_share")
    parser.add_argument("--rate", type=float, default=400.0)
    rate = parser.parse_args().rate
    with BenchStack(POLICY) as stack:
        stack.start_workers(ECHO_MODELS)
        stack.start_front()
        measure("127.0.0.1", stack.gateway_port, "/v1/infer/bench", BODY, rate=200, duration_s=2)
        pids = {name: int((stack.dir / f"{name}.pid").read_text()) for name in stack.specs}
        if stack.broker is not None and (pid := stack.broker.pid()) is not None:
            pids["broker"] = pid
        share: dict[str, float] = {}

        def sample() -> None:
            time.sleep(2)  # into the steady part of the run
            before, began = {n: cpu_ticks(p) for n, p in pids.items()}, time.monotonic()
            time.sleep(5)
            took = time.monotonic() - began
            share.update(
                {
                    n: round(100 * (cpu_ticks(p) - before[n]) / CLK_TCK / took, 1)
                    for n, p in pids.items()
                }
            )

        sampler = threading.Thread(target=sample)
        sampler.start()
        measure("127.0.0.1", stack.gateway_port, "/v1/infer/bench", BODY, rate=rate, duration_s=10)
        sampler.join()
    print(json.dumps({"rate": rate, "cpu_percent_of_one_core": share}))


if __name__ == "__main__":
    main()

"""What tracing costs: CPU-ms per request of each process of the stream path (gateway,
rendezvous, three echo workers, broker) with tracing off, on, and off again, in one run
on one broker, under the same open-loop load (bench.stream_overhead's stack and meter).

    python -m bench.tracing_cost                               # about 4 minutes
    python -m bench.tracing_cost --seconds 15 --warm-up 30     # shorter

"On" exports every span over OTLP/HTTP to a receiver in this process that answers 200
and counts what it got (no backend's own cost is counted). The two "off" windows bound
the noise: tracing off should sit within them. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.loadgen import summary
from bench.stack import ECHO_MODELS, POLICY, BenchStack
from bench.stream_overhead import costed


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver that keeps nothing: 200 and a count."""

    exports = 0
    bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        type(self).exports += 1
        type(self).bytes += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        return


def phase(
    stack: BenchStack, env: dict[str, str], rate: float, seconds: float, warm_s: float
) -> dict[str, Any]:
    """(Re)start every process with ``env`` added, warm up, then one measured window."""
    for key in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        stack.env.pop(key, None)
    stack.env.update(env)
    stack.start_workers(ECHO_MODELS)
    stack.start_front()
    meter = stack.meter()
    costed(meter, stack.gateway_port, rate, warm_s)  # warm-up, not counted
    run, cost = costed(meter, stack.gateway_port, rate, seconds)
    s = summary(run)
    return {
        "n": len(run.results),
        "ok_share": s["ok_share"],
        "p50": s["p50"],
        "p99": s["p99"],
        "cpu_ms": cost["cpu_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="each measured window")
    parser.add_argument(
        "--warm-up", type=float, default=60.0, help="seconds of load before the first window"
    )
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    on = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        with BenchStack(POLICY) as stack:
            for name, env in (("off", {}), ("on", on), ("off-again", {})):
                # the first window also warms the fresh broker's JVM (its JIT: a minute)
                warm_s = args.warm_up if name == "off" else min(args.seconds, 10.0)
                results[name] = phase(stack, env, args.rate, args.seconds, warm_s)
                print(f"{name:<10} {json.dumps(results[name])}", flush=True)
    finally:
        server.shutdown()
    results["receiver"] = {"exports": _Receiver.exports, "bytes": _Receiver.bytes}
    off = [results["off"]["cpu_ms"]["total"], results["off-again"]["cpu_ms"]["total"]]
    print(
        f"total CPU-ms per request: off {off[0]:.3f} / {off[1]:.3f}, "
        f"on {results['on']['cpu_ms']['total']:.3f} "
        f"({_Receiver.exports} OTLP exports, {_Receiver.bytes} bytes)"
    )
    print(json.dumps({"rate": args.rate, "seconds": args.seconds, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sampled shadows through the real stack: does a 10% sampled shadow score 10% of the
requests, and does ``rdv compare`` estimate from it what it estimates from a full one?

    python -m bench.sampled_shadow                      # 3000 requests at 20/s: ~3.5 min
    python -m bench.sampled_shadow --requests 600       # a smoke run, ~1 min

A real Kafka broker (bench.stack), gateway, rendezvous, the archive and three workers,
each its own process: the champion ``champ`` (echo, no added time) and two shadows
of one runtime with the same params, ``full`` (every request) and ``part``
(``sample: 0.1``). The shadows take 3..17 ms per batch and fail 5% of requests: the
known difference from the champion; the endpoint's deadline is 25 ms, so the share
answered within it differs too. Requests are sent open-loop at a modest rate, so the
shadows seldom queue: a shadow that queued would be slower under the full load than
under a tenth of it (a load effect, not an estimation error: a first version whose
shadows took 260 ms on 5% of requests, past a 250 ms deadline, queued behind those,
and the full shadow answered 78% of 400 requests within the deadline, not 95%).
Once the archive holds every request's three scores and its decision, it reports:

- the share of requests ``part`` scored, with its Wilson interval (target 10% +- 1%),
  and whether the scored requests are exactly those the hash puts in the sample;
- ``rdv compare``'s figures (services.compare.run.compare) of champ vs full and champ
  vs part: latency quantiles (intervals from order statistics of the archived
  latencies), within-deadline and error rates, agreement, the champion's own figures
  over each pairing, with intervals; per figure, whether the two estimates agree
  (their intervals overlap, and whether full's value lies inside part's interval).

The machine is printed first and last; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, JsonValue

from bench.chaos_report import cpu_times, machine
from bench.loadgen import measure
from bench.stack import BenchStack, free_port
from services.common.archive_files import connect
from services.common.sampling import in_sample
from services.compare.intervals import Z95, wilson
from services.compare.paired import Window
from services.compare.run import compare
from services.devstack.stack import ProcessSpec, start, stop
from services.workers.runtime import Params, Prediction, PredictionError, parse_params
from services.workers.testmodels import LatencyModel, LatencyParams

ENDPOINT = "bench"
DEADLINE_MS = 25
SHARE = 0.1
POLICY = f"""
endpoint: {ENDPOINT}
deadline_ms: {DEADLINE_MS}
models: [champ]
stages:
  - {{until_ms: deadline, accept: [champ]}}
"""
CHAMP = f"echo:name=champ,role=champion,endpoints={ENDPOINT},latency_ms=0"
SHADOW_PARAMS: dict[str, JsonValue] = {
    "latency_ms": 3,
    "jitter_ms": 14,
    "error_share": 0.05,
}
BODY: dict[str, object] = {"inputs": {"text": "hello"}}
QUANTILES = (0.5, 0.9, 0.99)
RATES = ("within_deadline", "error_rate", "skip_rate")


class FlakyParams(LatencyParams):
    """Params of ``FlakyLatency``: ``latency``'s and the share of requests that fail."""

    error_share: float = Field(default=0.0, ge=0.0, le=1.0)


class FlakyLatency(LatencyModel):
    """``latency``'s profile, and each request fails with probability ``error_share``."""

    runtime = "flaky-latency"

    def _profile(self, params: Params) -> LatencyParams:
        return parse_params(FlakyParams, params, self.runtime)

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        outputs = super().predict_batch(payloads)
        share = getattr(self.profile, "error_share", 0.0)
        return [
            PredictionError("fails on purpose") if self._rng.random() < share else out
            for out in outputs
        ]


def shadow_spec(folder: Path, name: str, sample: float) -> str:
    """A spec file of a shadow (``FlakyLatency``, a ``module:Class`` runtime)."""
    path = folder / f"{name}.yaml"
    spec = {
        "name": name,
        "runtime": "bench.sampled_shadow:FlakyLatency",
        "role": "challenger",
        "endpoints": [ENDPOINT],
        "params": SHADOW_PARAMS,
        "sample": sample,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


@contextmanager
def archive_process(stack: BenchStack, root: Path) -> Iterator[None]:
    """The archive service writing under ``root``, flushing every second."""
    port = free_port()
    spec = ProcessSpec(
        name="archive",
        command=["python", "-m", "services.archive"],
        env={
            "RDV_ARCHIVE_DIR": str(root),
            "RDV_ARCHIVE_OPS_PORT": str(port),
            "RDV_ARCHIVE_MAX_AGE_S": "1",
            "RDV_ARCHIVE_LOG_LEVEL": "WARNING",
        },
        ready=f"http://127.0.0.1:{port}/readyz",
    )
    start(spec, stack.env, stack.dir)
    try:
        yield
    finally:
        stop(spec, stack.dir)


_COUNTS = """
SELECT (SELECT count(*) FROM requests WHERE endpoint = $e),
       (SELECT count(*) FROM scores WHERE endpoint = $e),
       (SELECT count(*) FROM decisions WHERE endpoint = $e)
"""


def wait_archived(root: Path, sent: int, timeout_s: float = 120.0) -> tuple[int, int, int]:
    """Poll the archive until every request it holds has three scores and a decision
    and it holds at least ``sent`` requests (or the timeout passes)."""
    until = time.monotonic() + timeout_s
    counts = (0, 0, 0)
    while time.monotonic() < until:
        if root.is_dir():
            con = connect(root)
            try:
                row = con.execute(_COUNTS, {"e": ENDPOINT}).fetchone()
            finally:
                con.close()
            assert row is not None
            counts = (int(row[0]), int(row[1]), int(row[2]))
            if counts[0] >= sent and counts[1] == 3 * counts[0] and counts[2] == counts[0]:
                break
        time.sleep(1.0)  # the archive flushes every second
    return counts


def latencies(root: Path, model: str) -> list[float]:
    """The model's ok latencies (score finished minus request created), sorted."""
    con = connect(root)
    try:
        rows = con.execute(
            "SELECT s.finished_ms - r.created_ms FROM scores s JOIN requests r "
            "USING (request_id) WHERE s.model = $m AND s.status = 'ok' ORDER BY 1",
            {"m": model},
        ).fetchall()
    finally:
        con.close()
    return [float(v) for (v,) in rows]


def quantile_interval(ordered: list[float], q: float) -> dict[str, float | int | None]:
    """The q-quantile and its distribution-free 95% interval (order statistics at the
    ranks a binomial(n, q) count puts around n q; infinite on a side the values cannot
    bound, e.g. above a p99 of fewer than a few hundred values)."""
    n = len(ordered)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo, hi = math.floor(n * q - half) - 1, math.ceil(n * q + half)
    value = ordered[min(n - 1, max(0, math.ceil(n * q) - 1))]
    return {  # a rank past either end: too few values to bound it on that side
        "value": value,
        "low": ordered[lo] if lo >= 0 else -math.inf,
        "high": ordered[hi] if hi <= n - 1 else math.inf,
        "n": n,
    }


def membership(root: Path) -> dict[str, int]:
    """How the requests ``part`` scored match the hash: in both, or in one only."""
    con = connect(root)
    try:
        rows = con.execute(
            "SELECT r.request_id, s.status, s.error FROM requests r JOIN scores s "
            "USING (request_id) WHERE s.model = 'part'"
        ).fetchall()
    finally:
        con.close()
    out = {"scored_in_hash": 0, "scored_outside_hash": 0, "skipped_in_hash": 0, "left_out": 0}
    for rid, status, error in rows:
        hashed = in_sample("part", rid, SHARE)
        left_out = status == "skipped" and str(error or "").startswith("[not_sampled]")
        if left_out:
            out["skipped_in_hash" if hashed else "left_out"] += 1
        else:
            out["scored_in_hash" if hashed else "scored_outside_hash"] += 1
    return out


def agree(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Whether two estimates agree: their intervals overlap; full's value inside part's."""
    shown = {"full": _bounded(a), "part": _bounded(b)}
    if a.get("low") is None or b.get("low") is None:
        return {**shown, "overlap": None, "full_in_part": None}
    return {
        **shown,
        "overlap": a["low"] <= b["high"] and b["low"] <= a["high"],
        "full_in_part": b["low"] <= a["value"] <= b["high"],
    }


def _bounded(x: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: an unbounded side is None."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in x.items()}


def estimates(root: Path) -> dict[str, Any]:
    """compare's figures of champ vs full and champ vs part, side by side."""
    reports = {m: compare(root, Window("champ", m, ENDPOINT)) for m in ("full", "part")}
    data = {m: r.as_dict() for m, r in reports.items()}
    out: dict[str, Any] = {"figures": {}}
    figures = out["figures"]
    for key in RATES:
        figures[f"shadow.{key}"] = agree(
            data["full"]["models"]["full"][key], data["part"]["models"]["part"][key]
        )
        figures[f"champ.{key}"] = agree(
            data["full"]["models"]["champ"][key], data["part"]["models"]["champ"][key]
        )
    for key in ("exact", "challenger_faster"):
        figures[f"agreement.{key}"] = agree(
            data["full"]["agreement"][key], data["part"]["agreement"][key]
        )
    lat = {m: latencies(root, m) for m in ("full", "part")}
    for q in QUANTILES:
        name = f"p{round(q * 100)}"
        figures[f"shadow.latency_{name}_ms"] = agree(
            quantile_interval(lat["full"], q), quantile_interval(lat["part"], q)
        )
    out["paired"] = {m: data[m]["paired"] for m in data}
    out["sample"] = {m: data[m]["models"][m]["sample"] for m in data}
    out["verdict"] = {m: data[m]["verdict"] for m in data}
    out["tables"] = {m: reports[m].table() for m in reports}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sampled_shadow")
    parser.add_argument("--requests", type=int, default=3000, help="requests to send")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    args = parser.parse_args(argv)
    steal0 = cpu_times()
    print("machine:", json.dumps(machine()))
    out: dict[str, Any] = {
        "requests": args.requests,
        "rate": args.rate,
        "deadline_ms": DEADLINE_MS,
        "sample": SHARE,
        "shadow_params": SHADOW_PARAMS,
    }
    began = time.monotonic()
    with BenchStack(POLICY) as stack:
        root = stack.dir / "archive"
        with archive_process(stack, root):
            stack.start_workers(
                {
                    "champ": CHAMP,
                    "full": shadow_spec(stack.dir, "full", 1.0),
                    "part": shadow_spec(stack.dir, "part", SHARE),
                }
            )
            stack.start_front()
            path = f"/v1/infer/{ENDPOINT}"
            run = measure(
                "127.0.0.1",
                stack.gateway_port,
                path,
                BODY,
                rate=args.rate,
                duration_s=args.requests / args.rate,
            )
            out["http_statuses"] = {str(k): v for k, v in run.statuses().items()}
            print(f"sent {len(run.results)} requests: statuses {run.statuses()}")
            counts = wait_archived(root, sent=run.statuses().get(200, 0))
            out["archived"] = dict(zip(("requests", "scores", "decisions"), counts, strict=True))
            print(f"archived: {out['archived']}")
            found = estimates(root)
            member = membership(root)
    sample = found["sample"]["part"]
    observed = sample["observed"]
    out["scored_share"] = observed
    out["scored_share_within_1pt"] = abs(observed["value"] - SHARE) <= 0.01
    out["membership"] = member
    out["exact_membership"] = member["scored_outside_hash"] == member["skipped_in_hash"] == 0
    out["offline_share_1m_ids"] = wilson(
        sum(in_sample("part", f"id-{i}", SHARE) for i in range(1_000_000)), 1_000_000
    ).as_dict()
    out["paired"] = found["paired"]
    out["configured"] = {m: s["configured"] for m, s in found["sample"].items()}
    out["figures"] = found["figures"]
    checks = [f for f in found["figures"].values() if f["overlap"] is not None]
    out["all_overlap"] = all(f["overlap"] for f in checks)
    out["full_in_part"] = sum(bool(f["full_in_part"]) for f in checks)
    out["figures_checked"] = len(checks)
    out["verdict"] = found["verdict"]
    out["wall_s"] = round(time.monotonic() - began, 1)
    for m, table in found["tables"].items():
        print(f"\nrdv compare --champion champ --challenger {m}:\n{table}")
    print(
        f"\npart scored {observed['value']:.2%} [{observed['low']:.2%}, {observed['high']:.2%}]"
        f" of {observed['n']} requests (target {SHARE:.0%} +- 1%), exact membership: "
        f"{out['exact_membership']}"
    )
    for name, f in found["figures"].items():
        print(f"{name:<28} full {_iv(f['full'])}  part {_iv(f['part'])}  overlap {f['overlap']}")
    out["machine"] = machine(steal0)
    print("machine:", json.dumps(out["machine"]))
    print(json.dumps(out, default=str))
    return 0


def _iv(x: dict[str, Any]) -> str:
    if x.get("value") is None:
        return "-"
    low = "-inf" if x["low"] is None else f"{x['low']:.4g}"
    high = "inf" if x["high"] is None else f"{x['high']:.4g}"
    return f"{x['value']:.4g} [{low}, {high}] (n {x['n']})"


if __name__ == "__main__":
    sys.exit(main())

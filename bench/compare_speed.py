"""How long ``rdv compare`` takes over a large archive: one million scores (500,000
requests, each scored by a champion and a challenger) plus their requests and decisions,
written as Parquet by the archive's own store.

    python -m bench.compare_speed                 # 1,000,000 scores, 3 repeats
    python -m bench.compare_speed --requests 50000 --repeats 1

Against, in the same run and on the same files:

- baseline scan: one DuckDB pass over the three views computing counts and exact
  latency quantiles (what any report must at least read);
- the compare itself (paired figures, sketches, agreement, decisions; the policy replay
  on its default 5,000-request sample).

Also checks the sketch's quantiles against DuckDB's exact ones. Reports medians; the
last line printed is one JSON object. Target: compare over 1M scores in under 5 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from services.archive.store import PartStore, hour_of
from services.common.archive_files import DECISIONS, REQUESTS, SCHEMAS, SCORES, connect
from services.compare.paired import Window
from services.compare.run import compare

T0 = 1_795_000_000_000
ROWS_PER_FILE = 250_000


def _source(n: int, topic: str, first: int) -> dict[str, list[object]]:
    return {
        "topic": [topic] * n,
        "partition": [0] * n,
        "offset": list(range(first, first + n)),
        "record_ms": [T0] * n,
        "archived_ms": [T0] * n,
    }


def _table(kind: str, columns: dict[str, Any]) -> pa.Table:
    schema = SCHEMAS[kind]
    n = len(next(iter(columns.values())))
    arrays = [pa.array(columns.get(f.name, [None] * n), type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def build(root: Path, requests: int, seed: int = 0) -> None:
    """The synthetic archive: champ ~ lognormal around 120 ms, chall around 80 ms with
    2% errors; every 10th request flagged by an OOD gate."""
    rng = random.Random(seed)
    store = PartStore(root, compression="zstd")
    for first in range(0, requests, ROWS_PER_FILE // 2):
        n = min(ROWS_PER_FILE // 2, requests - first)
        ids = [f"r{i}" for i in range(first, first + n)]
        created = [T0 + i for i in range(first, first + n)]
        req: dict[str, Any] = {
            "request_id": ids,
            "endpoint": ["chat"] * n,
            "payload": ['{"text":"hi"}'] * n,
            "attributes": [[] for _ in ids],
            "created_ms": created,
            "deadline_ms": [c + 1000 for c in created],
            "trace_id": ids,
            "v": [1] * n,
        }
        store.write(REQUESTS, hour_of(T0), _table(REQUESTS, req | _source(n, "req", first)))
        scores: dict[str, list[object]] = {k: [] for k in ("request_id", "model", "status")}
        scores |= {"output": [], "finished_ms": [], "endpoint": [], "role": [], "v": []}
        for rid, c in zip(ids, created, strict=True):
            for model, mu in (("champ", 4.8), ("chall", 4.4)):
                failed = model == "chall" and rng.random() < 0.02
                scores["request_id"].append(rid)
                scores["model"].append(model)
                scores["status"].append("error" if failed else "ok")
                scores["output"].append(None if failed else '{"text":"answer"}')
                scores["finished_ms"].append(c + rng.lognormvariate(mu, 0.5))
                scores["endpoint"].append("chat")
                scores["role"].append("champion" if model == "champ" else "challenger")
                scores["v"].append(1)
        src = _source(2 * n, "sco", 2 * first)
        store.write(SCORES, hour_of(T0), _table(SCORES, scores | src))
        dec: dict[str, Any] = {
            "request_id": ids,
            "endpoint": ["chat"] * n,
            "chosen_model": ["champ"] * n,
            "reason": ["champion_in_time"] * n,
            "propensity": [1.0] * n,
            "ood_status": ["flagged" if i % 10 == 0 else "clear" for i in range(n)],
            "v": [1] * n,
        }
        store.write(DECISIONS, hour_of(T0), _table(DECISIONS, dec | _source(n, "dec", first)))
        print(f"  wrote {first + n}/{requests} requests", file=sys.stderr)


_SCAN = """
SELECT s.model, count(*), count_if(s.status = 'ok'),
       quantile_cont(s.finished_ms - r.created_ms, [0.5, 0.9, 0.99])
FROM scores s JOIN requests r USING (request_id) JOIN decisions d USING (request_id)
GROUP BY s.model ORDER BY s.model
"""


def scan(root: Path) -> tuple[float, dict[str, list[float]]]:
    con = connect(root)
    started = time.perf_counter()
    rows = con.execute(_SCAN).fetchall()
    took = time.perf_counter() - started
    con.close()
    return took, {model: list(q) for model, _, _, q in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500_000, help="scores = 2 x requests")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rdv-compare-bench-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        build(root, args.requests)
        print(f"archive built in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        window = Window("champ", "chall", endpoint="chat")
        scans, compares = [], []
        exact: dict[str, list[float]] = {}
        report = None
        for _ in range(args.repeats):
            took, exact = scan(root)
            scans.append(took)
            started = time.perf_counter()
            report = compare(root, window, policies=Path("deploy/policies"))
            compares.append(time.perf_counter() - started)
        assert report is not None
        sketch = {
            m.model: [m.latency.quantile(q) for q in (0.5, 0.9, 0.99)]
            for m in (report.paired.champion, report.paired.challenger)
        }
    errors = {
        model: max(
            abs((s or 0.0) - e) / e for s, e in zip(sketch[model], exact[model], strict=True)
        )
        for model in sketch
    }
    result = {
        "scores": 2 * args.requests,
        "baseline_scan_s": statistics.median(scans),
        "compare_s": statistics.median(compares),
        "ratio": statistics.median(compares) / statistics.median(scans),
        "sketch_max_relative_error": max(errors.values()),
        "paired": report.paired.paired,
    }
    print(
        f"{result['scores']} scores: baseline scan {result['baseline_scan_s']:.2f} s, "
        f"compare {result['compare_s']:.2f} s ({result['ratio']:.1f}x the scan); "
        f"sketch quantiles within {result['sketch_max_relative_error']:.2%} of exact"
    )
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

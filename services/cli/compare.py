"""``rdv compare``: champion against challenger on the archived traffic (services.compare)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "compare",
        help="compare two models on the archived requests both scored",
        description=(
            "Paired figures of two models on identical archived requests: latency "
            "quantiles, share within the deadline, errors and skips, agreement, how often "
            "each was (and would be, under today's policy) chosen, OOD flags, off-policy "
            "reward estimates from feedback; a verdict line per figure."
        ),
    )
    parser.add_argument("--champion", required=True)
    parser.add_argument("--challenger", required=True)
    parser.add_argument("--endpoint", help="only this endpoint's requests")
    parser.add_argument("--since", help="epoch ms, ISO 8601, or e.g. 2h (that long ago)")
    parser.add_argument("--until", help="as --since")
    parser.add_argument(
        "--reference-since",
        help="drift reference window start (default: a span as long as the window, before it)",
    )
    parser.add_argument("--reference-until", help="drift reference window end")
    parser.add_argument("--archive", type=Path, default=Path(".rdv/archive"))
    parser.add_argument("--policies", type=Path, default=Path("deploy/policies"))
    parser.add_argument("--sample", type=int, default=5000, help="requests the policy replays")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--chart", type=Path, help="write the latency chart (HTML) here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.compare.chart import latency_chart  # noqa: PLC0415 - duckdb, pyarrow
    from services.compare.run import compare, drift_spans, window_from  # noqa: PLC0415

    keys = ("champion", "challenger", "endpoint", "since", "until")
    query = {k: v for k in (*keys, "reference_since", "reference_until") if (v := getattr(args, k))}
    now = time.time() * 1000
    window = window_from(query, now)
    policies = args.policies if args.policies.exists() else None
    report = compare(
        args.archive,
        window,
        policies=policies,
        sample=args.sample,
        drift=drift_spans(window, query, now),
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    if args.chart is not None:
        args.chart.write_text(latency_chart(report), encoding="utf-8")
        print(f"chart: {args.chart}")
    return 0

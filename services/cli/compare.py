"""``rdv compare``: champion against challenger on the archived traffic (services.compare)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from services.archive.settings import ArchiveSettings
from services.common.clock import wall_ms
from services.common.errors import ConfigError
from services.compare.chart import latency_chart
from services.compare.run import compare, drift_spans, window_from


def archive_dir(given: Path | None) -> Path:
    """``given``, else the folder the archive service writes (ArchiveSettings.dir:
    RDV_ARCHIVE_DIR, default .rdv/archive in the repo), wherever the command runs."""
    if given is not None:
        return given
    try:
        return ArchiveSettings().dir
    except ValidationError as exc:
        raise ConfigError(f"invalid archive settings (RDV_ARCHIVE_*): {exc}") from None


def run(args: argparse.Namespace) -> int:
    keys = ("champion", "challenger", "endpoint", "since", "until")
    query = {k: v for k in (*keys, "reference_since", "reference_until") if (v := getattr(args, k))}
    now = wall_ms()
    window = window_from(query, now)
    report = compare(
        archive_dir(args.archive),
        window,
        policies=args.policies,
        sample=args.sample,
        drift=drift_spans(window, query, now),
    )
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.table())
    if args.chart is not None:
        args.chart.write_text(latency_chart(report), encoding="utf-8")
        print(f"chart: {args.chart}")
    return 0

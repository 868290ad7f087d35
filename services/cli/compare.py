"""``rdv compare``: champion against challenger on the archived traffic (services.compare)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.common.clock import wall_ms


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "compare",
        help="compare two models on the archived requests both scored",
        description=(
            "Paired figures of two models on identical archived requests: latency "
            "quantiles, share within the deadline, errors and skips, agreement, how often "
            "each was (and would be, under the policy files' policy) chosen, OOD flags, "
            "off-policy reward estimates from feedback; a verdict line per figure."
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
    add_archive_argument(parser)
    parser.add_argument("--policies", type=Path, default=Path("deploy/policies"))
    parser.add_argument("--sample", type=count, default=5000, help="requests the policy replays")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--chart", type=Path, help="write the latency chart (HTML) here")
    parser.set_defaults(func=run)


def add_archive_argument(parser: argparse.ArgumentParser) -> None:
    """``--archive``, by default where the archive service writes (archive_dir)."""
    parser.add_argument(
        "--archive",
        type=Path,
        help="the archive's folder (default: the archive service's, RDV_ARCHIVE_DIR or "
        ".rdv/archive in the repo)",
    )


def archive_dir(given: Path | None) -> Path:
    """``given``, else the folder the archive service writes (ArchiveSettings.dir:
    RDV_ARCHIVE_DIR, default .rdv/archive in the repo), wherever the command runs."""
    if given is not None:
        return given
    from pydantic import ValidationError  # noqa: PLC0415 - keeps `rdv --help` fast

    from services.archive.settings import ArchiveSettings  # noqa: PLC0415
    from services.common.errors import ConfigError  # noqa: PLC0415

    try:
        return ArchiveSettings().dir
    except ValidationError as exc:
        raise ConfigError(f"invalid archive settings (RDV_ARCHIVE_*): {exc}") from None


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from services.compare.chart import latency_chart  # noqa: PLC0415 - duckdb, pyarrow
    from services.compare.run import compare, drift_spans, window_from  # noqa: PLC0415

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

"""``rdv replay``: send archived requests into the requests stream again (services.replay)."""

from __future__ import annotations

import argparse
import math
import sys
import uuid

from services.cli.compare import add_archive_argument, archive_dir, count
from services.common.clock import wall_ms
from services.replay import MARK_MAX


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay",
        help="send archived requests again, marked as a replay",
        description=(
            "Archived requests go into the requests stream again with a replay mark: every "
            "model (or only --model) scores them and the rendezvous records its decisions, "
            "but no reply is sent to any client. Scores and decisions of the replay are "
            "archived with the mark (the requests' `replay` column)."
        ),
    )
    parser.add_argument("--endpoint", help="only this endpoint's requests")
    parser.add_argument("--since", help="epoch ms, ISO 8601, or e.g. 2h (that long ago)")
    parser.add_argument("--until", help="as --since")
    parser.add_argument("--limit", type=count, default=100_000, help="at most this many")
    parser.add_argument("--model", help="only this model scores the replayed requests")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=positive_speed,
        default=1.0,
        help="1 = the original timing, 10 = ten times faster",
    )
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    parser.add_argument(
        "--mark",
        type=replay_mark,
        help=f"the replay's name, 1 to {MARK_MAX} characters (default: replay-<random>)",
    )
    add_archive_argument(parser)
    parser.set_defaults(func=run)


def positive_speed(text: str) -> float:
    """An argparse type: a finite number above 0 (nan or 0 would send all at once or
    never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def replay_mark(text: str) -> str:
    """An argparse type: a replay mark of 1 to MARK_MAX characters. Refused rather than
    cut short: the replayed ids start with it and must stay distinct."""
    if not 1 <= len(text) <= MARK_MAX:
        raise argparse.ArgumentTypeError(f"must be 1 to {MARK_MAX} characters, not {len(text)}")
    return text


def run(args: argparse.Namespace) -> int:
    from services.common.kafka import Producer, producer_config  # noqa: PLC0415
    from services.common.messages import ReturnAddress  # noqa: PLC0415
    from services.common.settings import KafkaSettings  # noqa: PLC0415
    from services.common.topics import load_topics  # noqa: PLC0415
    from services.compare.run import parse_time  # noqa: PLC0415
    from services.replay.plan import load_requests, offsets_ms  # noqa: PLC0415
    from services.replay.send import send  # noqa: PLC0415

    now = wall_ms()
    requests = load_requests(
        archive_dir(args.archive),
        endpoint=args.endpoint,
        since_ms=parse_time(args.since, now) if args.since else None,
        until_ms=parse_time(args.until, now) if args.until else None,
        limit=args.limit,
    )
    mark = args.mark or f"replay-{uuid.uuid4().hex[:8]}"
    if not requests:
        print(f"{mark}: no archived request matches; nothing sent")
        return 0
    settings = KafkaSettings()
    topics = load_topics(prefix=settings.topic_prefix)
    offsets = offsets_ms(requests, None if args.fast else args.speed)
    span_s = offsets[-1] / 1000.0
    print(f"{mark}: replaying {len(requests)} requests over {span_s:.1f} s", file=sys.stderr)
    result = send(
        Producer(producer_config(settings, "rdv-replay")),
        topics.requests,
        requests,
        offsets,
        mark=mark,
        reply_to=ReturnAddress(topic=topics.replies),
        model=args.model,
        progress=lambda done, total: print(f"  {done}/{total}", file=sys.stderr),
    )
    print(f"{mark}: {result.sent} sent, {result.failed} failed in {result.took_s:.1f} s")
    return 0 if result.failed == 0 else 1

"""``rdv replay``: send archived requests into the requests stream again (services.replay)."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path


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
    parser.add_argument("--limit", type=int, default=100_000, help="at most this many")
    parser.add_argument("--model", help="only this model scores the replayed requests")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, default=1.0, help="1 = the original timing, 10 = ten times faster"
    )
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    parser.add_argument("--mark", help="the replay's name (default: replay-<random>)")
    parser.add_argument("--archive", type=Path, default=Path(".rdv/archive"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.common.kafka import Producer, producer_config  # noqa: PLC0415
    from services.common.messages import ReturnAddress  # noqa: PLC0415
    from services.common.settings import KafkaSettings  # noqa: PLC0415
    from services.common.topics import load_topics  # noqa: PLC0415
    from services.compare.run import parse_time  # noqa: PLC0415
    from services.replay.plan import load_requests, offsets_ms  # noqa: PLC0415
    from services.replay.send import send  # noqa: PLC0415

    now = time.time() * 1000
    requests = load_requests(
        args.archive,
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

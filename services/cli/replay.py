"""``rdv replay``: send archived requests into the requests stream again (services.replay)."""

from __future__ import annotations

import argparse
import sys
import uuid

from services.cli.compare import archive_dir
from services.common.clock import wall_ms
from services.common.kafka import Producer, producer_config
from services.common.messages import ReturnAddress
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.compare.run import parse_time
from services.replay.plan import load_requests, offsets_ms
from services.replay.send import send


def run(args: argparse.Namespace) -> int:
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

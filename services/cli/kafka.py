"""``rdv kafka``: fetch, start, stop or inspect the local broker; create the topics."""

from __future__ import annotations

import argparse
import os

from services.common.kafka import Admin, admin_config, wait_for_broker
from services.common.settings import KafkaSettings
from services.common.topics import load_topics
from services.devstack.broker import LocalBroker, fetch_jars


def run(args: argparse.Namespace) -> int:
    external = os.environ.get("RDV_KAFKA_BOOTSTRAP")
    if args.action == "topics":
        return _ensure_topics(external or f"127.0.0.1:{args.port}")
    if external and args.action in ("start", "stop", "status"):
        count = wait_for_broker(external, timeout_s=args.timeout) if args.action != "stop" else 0
        verb = "answers" if count else "is not managed here"
        print(
            f"RDV_KAFKA_BOOTSTRAP={external} is set: using that broker ({verb}); "
            "nothing started or stopped"
        )
        return 0
    if args.action == "fetch":
        print(f"Kafka jars in {fetch_jars(quiet=not args.verbose)}")
        return 0
    broker = LocalBroker(port=args.port, state_dir=args.state_dir)
    if args.action == "start":
        took = broker.start(timeout_s=args.timeout)
        print(
            f"Kafka broker ready on {broker.bootstrap} in {took:.1f} s "
            f"(pid {broker.pid()}, log {broker.log_file})"
        )
        return 0
    if args.action == "stop":
        print("Kafka broker stopped" if broker.stop() else "Kafka broker was not running")
        return 0
    status = broker.status()
    state = f"running (pid {status.pid})" if status.running else "stopped"
    print(
        f"Kafka broker {state} on {status.bootstrap}; state in {status.state_dir}; "
        f"jars {'cached' if status.jars_cached else 'not fetched yet'}"
    )
    return 0 if status.running else 3


def _ensure_topics(bootstrap: str) -> int:
    settings = KafkaSettings(bootstrap=bootstrap)
    topics = load_topics(prefix=settings.topic_prefix)
    created = topics.ensure(Admin(admin_config(settings)))
    print(
        f"topics on {bootstrap}: {len(topics.by_role)} declared, "
        f"{len(created)} created ({', '.join(created) or 'none missing'})"
    )
    return 0

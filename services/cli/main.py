"""``rdv`` entry point: parse arguments, run one command, map errors to exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from services.cli import compare, control, replay
from services.common.errors import RendezvousError


def _kafka(args: argparse.Namespace) -> int:
    from services.cli import localkafka  # noqa: PLC0415 - keeps `rdv --help` fast
    from services.common.kafka import wait_for_broker  # noqa: PLC0415

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
        print(f"Kafka jars in {localkafka.fetch_jars(quiet=not args.verbose)}")
        return 0
    broker = localkafka.LocalBroker(port=args.port, state_dir=args.state_dir)
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
    from services.common.kafka import Admin, admin_config  # noqa: PLC0415
    from services.common.settings import KafkaSettings  # noqa: PLC0415
    from services.common.topics import load_topics  # noqa: PLC0415

    settings = KafkaSettings(bootstrap=bootstrap)
    topics = load_topics(prefix=settings.topic_prefix)
    created = topics.ensure(Admin(admin_config(settings)))
    print(
        f"topics on {bootstrap}: {len(topics.by_role)} declared, "
        f"{len(created)} created ({', '.join(created) or 'none missing'})"
    )
    return 0


def _stack(args: argparse.Namespace) -> int:
    from services.cli import up  # noqa: PLC0415

    action = {"up": up.up, "down": up.down, "ps": up.ps}[args.command]
    return action(args.port, args.stack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdv", description="Rendezvous command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("up", "start the local platform (broker, services, models)"),
        ("down", "stop the local platform"),
        ("ps", "show what of the local platform runs"),
    ):
        cmd = commands.add_parser(
            name,
            help=text,
            description=text + "; the processes are declared in deploy/local/stack.yaml",
        )
        cmd.add_argument(
            "--port",
            type=int,
            default=os.environ.get("RDV_KAFKA_PORT", "9092"),
            help="the local broker's port (default $RDV_KAFKA_PORT or 9092)",
        )
        cmd.add_argument(
            "--stack",
            type=Path,
            default=Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.yaml",
            help="the stack file (default deploy/local/stack.yaml)",
        )
        cmd.set_defaults(func=_stack)
    kafka = commands.add_parser(
        "kafka",
        help="the local single-node Kafka broker (KRaft)",
        description="Fetch, start, stop or inspect the local Kafka broker. With "
        "RDV_KAFKA_BOOTSTRAP set, that broker is used and nothing is started.",
    )
    kafka.add_argument(
        "action",
        choices=["start", "stop", "status", "fetch", "topics"],
        help="fetch: download the jars; topics: create the topics of "
        "deploy/kafka/topics.yaml that are missing",
    )
    kafka.add_argument(
        "--port",
        type=int,
        default=os.environ.get("RDV_KAFKA_PORT", "9092"),
        help="client port on 127.0.0.1 (controller: port+1); default $RDV_KAFKA_PORT or 9092",
    )
    kafka.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the broker to answer (default 90)",
    )
    kafka.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="broker data, log and pid (default .rdv/kafka-<port> in the repo)",
    )
    kafka.add_argument("--verbose", action="store_true", help="show Maven's output")
    kafka.set_defaults(func=_kafka)
    compare.add_parser(commands)
    replay.add_parser(commands)
    control.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return code
    except RendezvousError as exc:
        print(f"rdv: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """The reader of stdout left (``rdv ps | head``): end quietly, as a shell tool does.
    Stdout goes to /dev/null so that the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())

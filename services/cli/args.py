"""The ``rdv`` command line's arguments: every subcommand's parser, argparse only.

Each subcommand names the function that runs it as ``"module:function"`` (``run``), a
module of services.cli imported only when that subcommand runs, so ``rdv --help`` and
argument errors stay fast whatever the commands import.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from services.replay import MARK_MAX

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = PROJECT_ROOT / "deploy" / "local" / "stack.yaml"
POLICIES = Path(os.environ.get("RDV_RENDEZVOUS_POLICIES", "deploy/policies"))


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
            default=STACK_FILE,
            help="the stack file (default deploy/local/stack.yaml)",
        )
        cmd.set_defaults(run=f"up:{name}")
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
    kafka.set_defaults(run="kafka:run")
    _compare(commands)
    _replay(commands)
    _control(commands)
    _top(commands)
    return parser


def _top(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "top",
        help="a live view of the running platform from its metrics",
        description=(
            "Per endpoint requests/s, answers by model and reason, deadline misses and "
            "p50/p99; per model consumer lag, requests in flight, errors and batch fill; "
            "per consumer group lag. Read from every process's /metrics (the stack file's, "
            "or --target's), refreshed every --interval."
        ),
    )
    parser.add_argument("--once", action="store_true", help="read twice, print once, exit")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--interval",
        type=positive_speed,
        default=1.0,
        help="seconds between reads: the window of the rates (default 1)",
    )
    parser.add_argument(
        "--stack",
        type=Path,
        default=STACK_FILE,
        help="the stack file whose processes are read (default deploy/local/stack.yaml)",
    )
    parser.add_argument(
        "--target",
        action="append",
        metavar="NAME=URL",
        help="read this process's /metrics instead of the stack file's (repeatable; a URL "
        "without a path means its /metrics)",
    )
    parser.set_defaults(run="top:run")


def _compare(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    parser.set_defaults(run="compare:run")


def add_archive_argument(parser: argparse.ArgumentParser) -> None:
    """``--archive``, by default where the archive service writes (archive_dir)."""
    parser.add_argument(
        "--archive",
        type=Path,
        help="the archive's folder (default: the archive service's, RDV_ARCHIVE_DIR or "
        ".rdv/archive in the repo)",
    )


def _replay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    parser.set_defaults(run="replay:run")


def positive_speed(text: str) -> float:
    """An argparse type: a finite number above 0 (nan or 0 would send all at once or
    never)."""
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def replay_mark(text: str) -> str:
    """An argparse type: a replay mark of 1 to MARK_MAX characters. Refused rather than
    cut short: the replayed ids start with it and must stay distinct."""
    if not 1 <= len(text) <= MARK_MAX:
        raise argparse.ArgumentTypeError(f"must be 1 to {MARK_MAX} characters, not {len(text)}")
    return text


def _control(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    by = argparse.ArgumentParser(add_help=False)
    by.add_argument("--by", default=None, help="who makes the change (default: $USER)")
    by.add_argument(
        "--policies",
        type=Path,
        default=POLICIES,
        help="the base policy files (--direct; the gateway uses its own)",
    )
    by.add_argument(
        "--gateway",
        default=os.environ.get("RDV_GATEWAY_URL") or None,
        metavar="URL",
        help="make the change through this gateway's control API (default $RDV_GATEWAY_URL; "
        "the key in $RDV_API_KEY)",
    )
    by.add_argument(
        "--direct",
        action="store_true",
        help="write to the control topic from here, not through the gateway (operators; "
        "restrict it with Kafka ACLs)",
    )

    models = commands.add_parser("models", parents=[by], help="the model registry")
    models.add_argument("action", choices=["list"])
    models.set_defaults(run="control:models_list")

    deploy = commands.add_parser(
        "deploy", parents=[by], help="register a model and start its worker beside production"
    )
    deploy.add_argument("spec", help="a model spec file (models/specs/) or the inline form")
    deploy.add_argument("--role", choices=["challenger", "canary", "champion", "detector", "decoy"])
    deploy.add_argument("--deployer", choices=["process", "docker"], default="process")
    deploy.add_argument("--no-start", action="store_true", help="register only")
    deploy.set_defaults(run="control:deploy_model")

    promote = commands.add_parser(
        "promote",
        parents=[by],
        help="make a challenger the preferred answer (old champion: fallback)",
    )
    promote.add_argument("model")
    promote.add_argument("--endpoint", action="append", help="default: every endpoint it serves")
    promote.add_argument(
        "--gate",
        action="store_true",
        help="promote only when the sequential gate on the archive passes (exit 0 promoted, "
        "3 not yet, 4 rejected)",
    )
    promote.add_argument(
        "--watch", action="store_true", help="with --gate: check every --interval until it decides"
    )
    add_gate_arguments(promote)
    promote.set_defaults(run="control:promote_model")

    canary = commands.add_parser(
        "canary",
        parents=[by],
        help="watch the policy's canary; roll it back when significantly worse",
        description="The canary of the policy in force against its champion on the archive, "
        "with the sequential gate; when the canary is significantly worse on a metric, a "
        "new policy version without the canary (the evidence in its control entry). Exit 0: "
        "not found worse; 4: rolled back.",
    )
    canary.add_argument("action", choices=["watch"])
    canary.add_argument("endpoint")
    canary.add_argument("--once", action="store_true", help="check once, do not watch")
    add_gate_arguments(canary)
    canary.set_defaults(run="control:canary_command")

    retire = commands.add_parser(
        "retire", parents=[by], help="take a model out of every policy and stop its worker"
    )
    retire.add_argument("model")
    retire.add_argument("--deployer", choices=["process", "docker"], default="process")
    retire.add_argument("--keep-running", action="store_true")
    retire.set_defaults(run="control:retire_model")

    policy = commands.add_parser(
        "policy", parents=[by], help="show, set, roll back or evaluate a policy"
    )
    policy.add_argument("action", choices=["show", "set", "rollback", "evaluate"])
    policy.add_argument("endpoint")
    policy.add_argument(
        "file", nargs="?", type=Path, help="the policy document (set; evaluate: the candidate)"
    )
    policy.add_argument("--since", help="evaluate: epoch ms, ISO 8601, or e.g. 2h (that long ago)")
    policy.add_argument("--until", help="evaluate: as --since")
    policy.add_argument("--json", action="store_true", help="evaluate: print JSON")
    add_archive_argument(policy)
    policy.set_defaults(run="control:policy_command")


def add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The sequential gate's options (``rdv promote --gate``, ``rdv canary watch``)."""
    parser.add_argument("--alpha", type=probability, default=0.05, help="error rate (0.05)")
    parser.add_argument(
        "--non-inferiority",
        type=float,
        metavar="MARGIN",
        help="promote when the primary metric is surely not worse by MARGIN (default: "
        "only when significantly better)",
    )
    parser.add_argument(
        "--latency-margin",
        type=at_least_one,
        default=1.05,
        metavar="RATIO",
        help="latency counts as worse only when the challenger is surely more than RATIO "
        "times slower (geometric mean; default 1.05)",
    )
    parser.add_argument("--since", help="epoch ms, ISO 8601, or e.g. 2h (that long ago)")
    parser.add_argument("--until", help="as --since")
    parser.add_argument(
        "--interval", type=positive_speed, default=60.0, help="seconds between checks (60)"
    )
    parser.add_argument(
        "--max-wait", type=positive_speed, default=3600.0, help="seconds to watch at most (3600)"
    )
    add_archive_argument(parser)


def at_least_one(text: str) -> float:
    """An argparse type: a finite number of 1 or more."""
    value = _number(text)
    if not 1.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def probability(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value

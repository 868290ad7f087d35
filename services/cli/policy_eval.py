"""``rdv policy evaluate <endpoint> <file>``: a candidate policy's estimated mean reward
on the archive's decisions and feedback (services.compare.evaluate), next to the policy
in force."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from services.cli.compare import archive_dir
from services.common.archive_files import connect
from services.common.bandit import learned_from
from services.common.clock import wall_ms
from services.common.errors import ConfigError
from services.common.policy import Policy, parse_policy, read_documents
from services.compare.evaluate import Evaluation, evaluate, load_archived
from services.compare.intervals import Interval
from services.compare.learner import fold
from services.compare.offpolicy import PolicyEstimate
from services.compare.run import parse_time
from services.control.changes import checked_policy
from services.control.plane import Plane


def candidate_policy(endpoint: str, file: Path | None) -> Policy:
    """The one policy document of ``file``, for ``endpoint``, validated."""
    if file is None:
        raise ConfigError("rdv policy evaluate <endpoint> <file>: the candidate policy file")
    if not file.is_file():
        raise ConfigError(f"no policy file {file}")
    docs = read_documents(file)
    if len(docs) != 1:
        raise ConfigError(f"{file} must hold one policy document, not {len(docs)}")
    return parse_policy(checked_policy(endpoint, docs[0][1], str(file)), str(file))


def evaluate_command(args: argparse.Namespace, plane: Plane) -> int:
    candidate = candidate_policy(args.endpoint, args.file)
    archive = archive_dir(args.archive)
    if not archive.is_dir():
        raise ConfigError(f"no archive at {archive} (the archive service writes it: make up)")
    now = wall_ms()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    view = plane.show(args.endpoint)
    source = f"the policy in force of {args.endpoint}"
    in_force = parse_policy({**view["policy"], "version": view["version"]}, source)
    con = connect(archive)
    try:
        rows = load_archived(con, args.endpoint, since, until)
        folded, _ = fold(con)  # a bandit stage draws from what the learner would publish
    finally:
        con.close()
    learned = learned_from(0, folded.get(args.endpoint, {}))
    if not rows:
        raise ConfigError(
            f"no decisions with feedback for {args.endpoint} in the window "
            "(POST /v1/feedback records rewards; the archive writes them)"
        )
    result = evaluate(rows, candidate, in_force, learned=learned)
    if args.json:
        out = {"endpoint": args.endpoint, "candidate_file": str(args.file), **result.as_dict()}
        print(json.dumps(out, indent=2))
    else:
        print(table(args.endpoint, str(args.file), result))
    return 0


def table(endpoint: str, file: str, result: Evaluation) -> str:
    """The evaluation as a table: each policy, each estimator, its 95% interval."""
    version = result.in_force_version
    lines = [
        f"# {endpoint}: candidate {file} against version {version} in force, "
        f"{result.requests} decisions with feedback",
        f"{'policy':<16} {'estimator':<10} {'mean':>7}  {'95% interval':<18} {'ESS':>8} "
        f"{'matched':>8}",
    ]
    lines += _rows("candidate", result.candidate)
    if result.in_force is not None:
        label = f"in force (v{version})"
        if result.on_policy is not None:
            lines.append(f"{label:<16} {'on-policy':<10} {_interval(result.on_policy)}")
        lines += _rows(label, result.in_force)
    if result.agreement is not None:
        lines.append(
            f"# the replayed policy in force gives the logged answer on "
            f"{result.agreement:.1%} of its own decisions"
        )
    return "\n".join(lines)


def _rows(label: str, est: PolicyEstimate) -> list[str]:
    out = []
    for name, interval in (("IPS", est.ips), ("SNIPS", est.snips), ("DR", est.dr)):
        tail = f" {est.effective_sample_size:>8.1f} {est.matched:>8}" if name != "DR" else ""
        out.append(f"{label:<16} {name:<10} {_interval(interval)}{tail}")
    return out


def _interval(interval: Interval) -> str:
    if not math.isfinite(interval.value):
        return f"{'-':>7}  {'':<18}"
    bounds = f"[{interval.low:.3f}, {interval.high:.3f}]"
    return f"{interval.value:>7.3f}  {bounds:<18}"

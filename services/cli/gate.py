"""``rdv promote <model> --gate`` and ``rdv canary watch <endpoint>``: the sequential
promotion gate (services.compare.gate) on the archive, acting through the control plane.

Exit codes: ``promote --gate``: 0 promoted, 3 not yet (the gate is undecided; with
``--watch``: still undecided at ``--max-wait``), 4 rejected (the challenger is
significantly worse on a metric). ``canary watch``: 0 the canary was not found worse
(``--once``, or ``--max-wait`` passed), 4 it was, and its policy version without the
canary section (with the evidence) is in force.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

from services.cli.compare import archive_dir
from services.common.archive_files import connect
from services.common.clock import wall_ms
from services.common.errors import ConfigError
from services.common.policy import Policy, parse_policy
from services.compare.gate import (
    PROMOTE,
    REJECT,
    GateConfig,
    GateResult,
    Window,
    judge,
    tally_archive,
)
from services.compare.run import parse_time
from services.control.plane import Plane
from services.control.policies import champion_of

PROMOTED, NOT_YET, REJECTED = 0, 3, 4
Sleep = Callable[[float], None]


def gated_promote(
    args: argparse.Namespace,
    plane: Plane,
    who: str,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Check the gate on every target endpoint (again every ``--interval`` with
    ``--watch``); promote through the plane once every endpoint passes."""
    endpoints = list(args.endpoint or _registered(plane, args.model))
    if not endpoints:
        raise ConfigError(f"{args.model} is not registered: name the endpoint (--endpoint)")
    give_up = clock() + args.max_wait
    while True:
        results = {e: check(args, plane, e, args.model) for e in endpoints}
        for endpoint, (champion, result) in results.items():
            print(evidence_table(endpoint, champion, args.model, result))
        decisions = {r.decision for _, r in results.values()}
        if REJECT in decisions:
            print(f"{args.model}: not promoted (significantly worse; exit {REJECTED})")
            return REJECTED
        if decisions == {PROMOTE}:
            for change in plane.promote(args.model, endpoints, who):
                print(
                    f"{change['endpoint']}: {args.model} preferred, fallback "
                    f"{change['fallback'] or '-'} (policy version {change['version']})"
                )
            return PROMOTED
        if not args.watch or clock() + args.interval > give_up:
            print(f"{args.model}: not promoted yet (the gate is undecided; exit {NOT_YET})")
            return NOT_YET
        sleep(args.interval)


def canary_watch(
    args: argparse.Namespace,
    plane: Plane,
    who: str,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """The canary of the policy in force against its champion; when significantly worse
    on any metric, the policy again without its canary section, with the evidence."""
    give_up = clock() + args.max_wait
    while True:
        view = plane.show(args.endpoint)
        doc = dict(view["policy"])
        canary = (doc.get("canary") or {}).get("model")
        if canary is None:
            raise ConfigError(f"{args.endpoint}: policy version {view['version']} has no canary")
        since = _since(args) or view["changed_ms"]  # by default: since it went in force
        champion, result = check(args, plane, args.endpoint, str(canary), view=view, since=since)
        print(evidence_table(args.endpoint, champion, str(canary), result))
        worse = result.worse()
        if worse:
            evidence = {
                "check": "rdv canary watch",
                "endpoint": args.endpoint,
                "canary": canary,
                "champion": champion,
                "policy_version": view["version"],
                "since_ms": since,
                "until_ms": int(wall_ms()),
                **result.as_dict(),
            }
            rolled = {k: v for k, v in doc.items() if k != "canary"}
            change = plane.set_policy(args.endpoint, rolled, who, evidence)
            names = ", ".join(m.metric for m in worse)
            print(
                f"{args.endpoint}: canary {canary} significantly worse on {names}: rolled "
                f"back, policy version {change['version']} without the canary is in force"
            )
            return REJECTED
        if args.once or clock() + args.interval > give_up:
            return 0
        sleep(args.interval)


def check(
    args: argparse.Namespace,
    plane: Plane,
    endpoint: str,
    challenger: str,
    *,
    view: dict[str, Any] | None = None,
    since: int | None = None,
) -> tuple[str, GateResult]:
    """(the champion, the gate's result) for ``challenger`` on ``endpoint``'s archive."""
    view = view or plane.show(endpoint)
    champion = champion_of(view["policy"])
    if champion is None:
        raise ConfigError(f"{endpoint}: the first stage accepts any model: no champion to beat")
    if champion == challenger:
        raise ConfigError(f"{challenger} is already the champion of {endpoint}")
    policy = _policy(endpoint, view)
    now = wall_ms()
    until = parse_time(args.until, now) if args.until else None
    window = Window(endpoint, champion, challenger, since or _since(args), until)
    archive = archive_dir(args.archive)
    if not archive.is_dir():
        raise ConfigError(f"no archive at {archive} (the archive service writes it: make up)")
    con = connect(archive)
    try:
        tally = tally_archive(con, window, policy)
    finally:
        con.close()
    return champion, judge(tally, config(args))


def config(args: argparse.Namespace) -> GateConfig:
    return GateConfig(
        alpha=args.alpha,
        non_inferiority=args.non_inferiority,
        latency_margin=math.log(args.latency_margin),
    )


def evidence_table(endpoint: str, champion: str, challenger: str, result: GateResult) -> str:
    """The gate's evidence: per metric each side, the difference and its confidence
    sequence, n, the always-valid p-value and the call; then the decision."""
    lines = [
        f"# {endpoint}: {challenger} against {champion} (champion); alpha {result.alpha} "
        f"over {len(result.metrics)} metrics, primary {result.primary}",
        f"{'metric':<16} {'champion':>9} {'challenger':>10} {'difference':>11}  "
        f"{'confidence sequence':<22} {'n':>7} {'p':>7}  call",
    ]
    for m in result.metrics:
        d = m.as_dict()
        seq = "-" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
        lines.append(
            f"{m.metric:<16} {_num(d['champion']):>9} {_num(d['challenger']):>10} "
            f"{_num(d['difference'], '+.4f'):>11}  {seq:<22} {d['n']:>7} "
            f"{d['p_value']:>7.3f}  {d['call']}"
        )
    lines.append(f"gate: {result.decision} ({result.reason})")
    return "\n".join(lines)


def _num(value: object, spec: str = ".4g") -> str:
    return "-" if not isinstance(value, int | float) else format(value, spec)


def _policy(endpoint: str, view: dict[str, Any]) -> Policy:
    return parse_policy({**view["policy"], "version": view["version"]}, f"{endpoint} in force")


def _since(args: argparse.Namespace) -> int | None:
    return parse_time(args.since, wall_ms()) if args.since else None


def _registered(plane: Plane, model: str) -> list[str]:
    for reg in plane.models():
        if reg["name"] == model:
            return list(reg["endpoints"])
    return []

"""The chaos harness: the data plane under an open-loop load, through a fault schedule,
with the topics read back afterwards.

    python -m bench.chaos [--quick] [--only rendezvous-kill,poison] [--rate 50]

It starts its own Kafka broker on a free port and the local stack's data plane as real
processes on free ports, under services.devstack.supervisor as ``rdv up`` runs them (gateway,
two rendezvous replicas in one group, archive, the demo endpoint's champion ``fast`` and
fallback ``slow`` workers; policy deploy/policies/demo.yaml, deadline 1 s), sends
``--rate`` requests/s to ``/v1/infer/demo`` the whole time, and runs each scenario in
turn. Per scenario: seconds
with a degraded answer (non-200, or later than the deadline + 50 ms), requests with no
HTTP response at all (and refused connections), double replies and double decisions
(records per request id on those topics, read back at the end), dead letters against the
poison records injected (per reader), and process exits the harness did not cause.
A scenario's window lasts until answers are steady again; then whatever is still down
is brought back (counted, not hidden). It prints a table and, as its last line, one
JSON object. Figures and their meaning: docs/benchmarks.md, "Chaos"."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from bench.chaos_load import Load
from bench.chaos_poison import READERS, Poison, build_all
from bench.chaos_readback import (
    Window,
    dead_letters,
    doubles,
    expected_letters,
    keyed,
    letter_score,
    match_letters,
    read_topic,
    tally,
)
from bench.chaos_report import (
    cpu_times,
    degraded,
    last_degraded_after,
    load_figures,
    machine,
    table,
    timeline,
)
from bench.chaos_stack import DEADLINE_MS, ENDPOINT, ChaosStack, Exit
from services.common.kafka import Producer, producer_config

BODY = {"inputs": {"text": "hello"}}
SETTLE_S = 60.0  # after a scenario, wait at most this long for steady answers
SETTLE_LAG_S = 1.1  # a request due longer ago than this has its answer (deadline + 100 ms)


@dataclass(frozen=True)
class Timing:
    """How long each phase lasts (s): the quick schedule or the full one."""

    pre: float  # clean load before the fault
    post: float  # load after the last recovery step
    down: float  # a killed process stays down this long before its restart
    pause: float  # SIGSTOP .. SIGCONT
    recover: float  # load after the broker or both rendezvous replicas came back
    outage: float  # the broker outage, and the rendezvous-down outage
    poison_repeats: int
    poison_wait: float  # time for dead letters (a reply to a missing topic times out)


QUICK = Timing(
    pre=2, post=8, down=3, pause=10, recover=15, outage=20, poison_repeats=1, poison_wait=35
)
FULL = Timing(
    pre=3, post=15, down=5, pause=10, recover=20, outage=90, poison_repeats=3, poison_wait=40
)


@dataclass
class Run:
    """A scenario in progress: its stack, its schedule, what it noted."""

    stack: ChaosStack
    timing: Timing
    notes: dict[str, object] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)  # wall s of fault steps
    exits: list[Exit] = field(default_factory=list)
    poisons: list[Poison] = field(default_factory=list)

    def wait(self, seconds: float) -> None:
        self.stack.wait(seconds, self.exits.append)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def restart(self, name: str) -> None:
        try:
            self.notes[f"{name}_restart_s"] = round(self.stack.restart(name), 1)
        except RuntimeError as exc:
            self.notes[f"{name}_restart"] = f"failed: {exc}"
        self.mark(f"{name}_ready")
        self.wait(0)


def kill_restart(name: str) -> Callable[[Run], None]:
    def scenario(run: Run) -> None:
        run.wait(run.timing.pre)
        run.mark("fault")
        run.stack.kill(name)
        if run.stack.run_dir is None and name != "gateway":  # else: its supervisor's back-off
            run.wait(run.timing.down)
        run.restart(name)
        run.wait(run.timing.post)

    return scenario


def pause_resume(name: str) -> Callable[[Run], None]:
    def scenario(run: Run) -> None:
        run.wait(run.timing.pre)
        run.mark("fault")
        run.stack.pause(name)
        run.wait(run.timing.pause)
        run.stack.resume(name)
        run.mark("resumed")
        run.wait(run.timing.post)

    return scenario


def broker_down(outage: bool) -> Callable[[Run], None]:
    def scenario(run: Run) -> None:
        run.wait(run.timing.pre)
        run.mark("fault")
        run.stack.kill_broker()
        run.wait(run.timing.outage if outage else 0)
        run.notes["broker_restart_s"] = round(run.stack.start_broker(), 1)
        run.mark("recovered")  # the broker answers metadata again
        run.wait(run.timing.recover)

    return scenario


def rendezvous_down(run: Run) -> None:
    run.wait(run.timing.pre)
    run.mark("fault")
    run.stack.pause_supervisor()  # it restarts them once the outage is over
    for name in ("rendezvous-1", "rendezvous-2"):
        run.stack.kill(name)
    run.wait(run.timing.outage)
    run.stack.resume_supervisor()
    for name in ("rendezvous-1", "rendezvous-2"):
        if run.stack.run_dir is None:
            run.stack.services[name].spawn()
    for name in ("rendezvous-1", "rendezvous-2"):
        run.stack.wait_ready(name)
    run.mark("recovered")
    run.wait(run.timing.recover)


def poison(run: Run) -> None:
    run.wait(run.timing.pre)
    stack = run.stack
    assert stack.topics is not None
    run.poisons = build_all(stack.topics, run.timing.poison_repeats)
    before = {n: stack.metric(n, UNUSABLE) for n in CONTROL_READERS}
    producer = Producer(producer_config(stack.kafka, "chaos-poison"))
    failed: list[str] = []
    run.mark("fault")
    for p in run.poisons:
        producer.produce(p.out, lambda err: failed.append(err) if err else None)
        producer.poll(0)
    left = producer.flush(30.0)
    run.notes["poison_records"] = len(run.poisons)
    if failed or left:
        run.notes["poison_not_written"] = len(failed) + left
    run.wait(run.timing.poison_wait)
    expected = sum(1 for p in run.poisons if p.counted)
    counted = {}
    for name, was in before.items():
        now = stack.metric(name, UNUSABLE)
        got = "?" if was is None or now is None else str(int(now - was))
        counted[name] = f"{got}/{expected}"
    run.notes["control_unusable_counted"] = counted


UNUSABLE = "rdv_control_unusable_records_total"
CONTROL_READERS = ("gateway", "rendezvous-1", "rendezvous-2")
"""The processes that follow the control topic, each counting what it cannot use."""


def baseline(run: Run) -> None:
    run.wait(run.timing.pre + run.timing.post)


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "baseline": baseline,
    "gateway-kill": kill_restart("gateway"),
    "rendezvous-kill": kill_restart("rendezvous-1"),
    "worker-fast-kill": kill_restart("worker-fast"),
    "worker-slow-kill": kill_restart("worker-slow"),
    "archive-kill": kill_restart("archive"),
    "rendezvous-stop": pause_resume("rendezvous-2"),
    "worker-stop": pause_resume("worker-fast"),
    "broker-kill": broker_down(outage=False),
    "broker-outage": broker_down(outage=True),
    "rendezvous-down": rendezvous_down,
    "poison": poison,
}
"""Every scenario, in the order they run. rendezvous-down kills both replicas for the
outage and restarts them; the others name what they kill or stop."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 s outages, one poison round")
    parser.add_argument("--only", default="", help=f"comma-separated of: {','.join(SCENARIOS)}")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s (default 50)")
    parser.add_argument(
        "--keep-dir", type=Path, help="keep logs and broker state here (default: a temp dir)"
    )
    parser.add_argument(
        "--no-supervisor",
        action="store_true",
        help="start the processes here, not under services.devstack.supervisor: the harness "
        "restarts only what it killed (and, between scenarios, what died)",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if args.rate <= 0:
        parser.error("--rate must be above 0")
    args.scenarios = [s for s in SCENARIOS if s in chosen]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    timing = QUICK if args.quick else FULL
    steal0 = cpu_times()
    began_ms = int(time.time() * 1000)
    windows: list[Window] = []
    runs: dict[str, Run] = {}
    healed: dict[str, list[str]] = {}
    supervised = not args.no_supervisor and find_spec("services.devstack.supervisor") is not None
    with ChaosStack(supervised=supervised, keep_dir=args.keep_dir) as stack:
        say(f"stack ready in {stack.start_all():.1f} s (broker {stack.kafka.bootstrap})")
        path = f"/v1/infer/{ENDPOINT}"
        load = Load("127.0.0.1", stack.gateway_port, path, BODY, args.rate)
        load.start()
        warm = warm_up(load, stack)
        say(f"answers steady after {warm:.1f} s of load")
        for name in args.scenarios:
            run = Run(stack, timing)
            say(f"scenario {name} ...")
            start = time.time()
            try:
                SCENARIOS[name](run)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not end the run
                run.notes["harness_error"] = f"{type(exc).__name__}: {exc}"
            ended = time.time()
            runs[name] = run
            try:
                if back := stack.heal():
                    healed[name] = back
            except RuntimeError as exc:  # a process that cannot come back: say so, go on
                run.notes["heal_error"] = str(exc)
            # the window lasts until answers are steady again: the next fault starts clean
            settle = warm_up(load, stack, SETTLE_S, run.exits.append)
            run.notes["settled_s"] = (
                f"not in {SETTLE_S:g}" if math.isnan(settle) else round(time.time() - ended, 1)
            )
            # it ends where the 3 steady seconds ended (answers after that were not looked at)
            end = time.time() - (0.0 if math.isnan(settle) else SETTLE_LAG_S)
            windows.append(Window(name, start, end))
        sent = load.stop()
        say("reading the topics back ...")
        topics = stack.topics
        assert topics is not None
        replies = tally(keyed(read_topic(stack.kafka, topics, "replies", began_ms)))
        decisions = tally(keyed(read_topic(stack.kafka, topics, "decisions", began_ms)))
        letters = dead_letters(read_topic(stack.kafka, topics, "dead_letters", began_ms))
        roles = {name: role for role, name in topics.by_role.items()}
    poisons = [p for r in runs.values() for p in r.poisons]
    matched = match_letters(letters, poisons, roles, windows)
    expected = expected_letters(poisons)
    dbl_rep, dbl_dec = doubles(replies, windows), doubles(decisions, windows)
    rows, out = [], {}
    for w in windows:
        run = runs[w.name]
        figures = load_figures(sent, w.start, w.end, DEADLINE_MS)
        others = sum(n for (win, _s, _r), n in matched.others.items() if win == w.name)
        row: dict[str, object] = {
            "scenario": w.name,
            "requests": figures.requests,
            "degraded_s": figures.degraded_s,
            "failed": figures.requests - figures.ok,
            "no_response": figures.no_response,
            "refused": figures.refused,
            "double_replies": dbl_rep.get(w.name, 0),
            "double_decisions": dbl_dec.get(w.name, 0),
            "dead_letters": "",
            "other_dead_letters": others,
            "exits": len(run.exits),
            "p99_ms": figures.p99_ms,
        }
        row |= scenario_extras(run, sent, w, matched.by_class)
        detail = {
            **row,
            "seconds": round(w.end - w.start, 1),
            "statuses": figures.statuses,
            "p50_ms": figures.p50_ms,
            "timeline": timeline(sent, w.start, w.end, DEADLINE_MS),
            "marks_s": {k: round(v - w.start, 1) for k, v in run.marks.items()},
            "notes": run.notes,
            "exit_list": [f"{e.service} code {e.code}: {e.last_line}" for e in run.exits],
            "restarted_after": healed.get(w.name, []),
        }
        rows.append(row)
        out[w.name] = detail
    if poisons:
        out["poison"]["classes"] = poison_rows(poisons, expected, matched.by_class, decisions)
    host, rev = machine(steal0), revision()
    print(
        f"machine: {host['cpu']}, {host['cores']} cores, flags {'/'.join(host['flags'])}, "  # type: ignore[arg-type]
        f"steal {host.get('steal_pct')}%; rate {args.rate:g}/s, deadline {DEADLINE_MS} ms, "
        f"{'supervised' if supervised else 'harness restarts'}, code {rev}"
    )
    print(table(rows))
    if poisons:
        print_poison(out["poison"]["classes"])
        out["poison"]["per_reader"] = per_reader(out["poison"]["classes"])
        readers = ", ".join(f"{k} {v}" for k, v in out["poison"]["per_reader"].items())
        print(f"dead letters got/expected per reader: {readers}")
        counted = runs["poison"].notes.get("control_unusable_counted", {})
        text = ", ".join(f"{k} {v}" for k, v in counted.items())  # type: ignore[attr-defined]
        print(f"control records counted unusable got/expected per process: {text}")
    print("\nper second (. in time, l late 200, 3 a 503, 4 a 504, x no response or refused):")
    for name, detail in out.items():
        print(f"  {name:<17} {detail['timeline']}")
    for name, detail in out.items():
        for line in detail.get("exit_list", []):  # type: ignore[union-attr]
            print(f"exit in {name}: {line}")
    if matched.other_errors:
        print("dead letters of non-poison records (first few):")
        for line in matched.other_errors:
            print("  " + line)
    summary = {
        "command": "python -m bench.chaos " + " ".join(sys.argv[1:] if argv is None else argv),
        "revision": rev,
        "quick": args.quick,
        "rate": args.rate,
        "supervised": supervised,
        "deadline_ms": DEADLINE_MS,
        "load_max_lag_ms": round(load.max_lag_ms, 1),
        "warm_up_s": round(warm, 1),
        "machine": host,
        "between_double_replies": dbl_rep.get("(between)", 0),
        "between_double_decisions": dbl_dec.get("(between)", 0),
        "scenarios": out,
    }
    print(json.dumps(summary, default=str))
    return 0


def warm_up(
    load: Load,
    stack: ChaosStack,
    limit_s: float = 120.0,
    on_exit: Callable[[Exit], None] | None = None,
) -> float:
    """Wait until 3 s of load were answered in time (a group still settling is not a
    fault); returns the seconds waited (NaN if it never settled within ``limit_s``)."""
    began = time.time()
    while time.time() - began < limit_s:
        stack.wait(0.5, on_exit)
        now = time.time()
        recent = [
            s for s in list(load.results) if now - 3 - SETTLE_LAG_S <= s.due < now - SETTLE_LAG_S
        ]
        oldest = load.oldest_pending()
        late = oldest is not None and oldest < now - SETTLE_LAG_S  # still no answer
        if (
            not late
            and len(recent) >= 0.8 * 3 * load.rate
            and not any(degraded(s, DEADLINE_MS) for s in recent)
        ):
            return time.time() - began
    return float("nan")


def scenario_extras(
    run: Run,
    sent: list,  # type: ignore[type-arg]
    w: Window,
    got: dict[tuple[str, str], int],
) -> dict[str, object]:
    """The columns only some scenarios have: recovery times and the poison tally."""
    extra: dict[str, object] = {}
    notes = []
    fault = run.marks.get("fault")
    ready = run.marks.get("recovered") or next(
        (v for k, v in run.marks.items() if k.endswith("_ready")), None
    )
    if fault is not None and ready is not None:
        before = load_figures(sent, fault, ready, DEADLINE_MS).degraded_s
        after = load_figures(sent, ready, w.end, DEADLINE_MS).degraded_s
        resume = last_degraded_after(sent, ready, w.end, DEADLINE_MS)
        extra["degraded_s_until_restart"] = before
        extra["degraded_s_after_restart"] = after
        censored = resume > w.end - ready - 1.0  # still degraded in the last second
        extra["resume_s"] = f">={resume}" if censored else resume
        notes.append(
            f"{before}s degr until back, {after}s after; resumed "
            + (f"not by {resume}s" if censored else f"{resume}s after")
        )
    if (resumed := run.marks.get("resumed")) is not None:
        after = load_figures(sent, resumed, w.end, DEADLINE_MS).degraded_s
        extra["degraded_s_after_resume"] = after
        notes.append(f"{after}s degr after SIGCONT")
    for key, value in run.notes.items():
        if key.endswith(("_s", "error", "_restart", "not_written")):
            notes.append(f"{key}={value}")
    if run.poisons:
        hit, exp, unexpected = letter_score(run.poisons, got)
        extra["dead_letters"] = f"{hit}/{exp}" + (f" +{unexpected}" if unexpected else "")
    extra["note"] = "; ".join(notes)
    return extra


def poison_rows(
    poisons: list[Poison],
    expected: dict[tuple[str, str], int],
    got: dict[tuple[str, str], int],
    decisions: object,
) -> list[dict[str, object]]:
    """Per poison class: records injected, per reader dead letters got/expected, and
    (for valid-looking requests) how many ids were decided more than once."""
    counts = getattr(decisions, "count", {})
    rows = []
    for cls in sorted({p.cls for p in poisons}):
        mine = [p for p in poisons if p.cls == cls]
        readers = sorted({s for p in mine for s in READERS[p.role]})
        ids = {p.decided_once for p in mine if p.decided_once}
        rows.append(
            {
                "class": cls,
                "injected": len(mine),
                "tolerated": not any(p.expect or p.counted for p in mine),
                "counted_by": sorted({r for p in mine for r in p.counted}),
                "dead_letters": {
                    s: f"{got.get((cls, s), 0)}/{expected.get((cls, s), 0)}" for s in readers
                },
                "decided_twice": sum(1 for i in ids if counts.get(i, 0) > 1),
                "decided": sum(1 for i in ids if counts.get(i, 0) >= 1),
                "valid_requests": len(ids),
            }
        )
    return rows


def per_reader(rows: list[dict[str, object]]) -> dict[str, str]:
    """Reader -> dead letters got/expected over every poison class."""
    got: dict[str, list[int]] = {}
    for r in rows:
        for reader, text in r["dead_letters"].items():  # type: ignore[attr-defined]
            g, e = (int(x) for x in str(text).split("/"))
            pair = got.setdefault(reader, [0, 0])
            pair[0] += min(g, e)
            pair[1] += e
    return {k: f"{g}/{e}" for k, (g, e) in sorted(got.items())}


def print_poison(rows: list[dict[str, object]]) -> None:
    print("\npoison classes (dead letters got/expected per reader; tolerated: none expected)")
    for r in rows:
        dl = " ".join(f"{k}={v}" for k, v in r["dead_letters"].items())  # type: ignore[attr-defined]
        extra = (
            f"  decided {r['decided']}/{r['valid_requests']}, twice {r['decided_twice']}"
            if r["valid_requests"]
            else ""
        )
        kind = "tolerated" if r["tolerated"] else "rejected"
        if r["counted_by"]:
            dl += " (counted unusable, not dead-lettered)"
        print(f"  {r['class']:<36} x{r['injected']:<3} {kind:<9} {dl}{extra}")


def revision() -> str:
    """The commit the run measured, with ``+dirty`` when the services' code differed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services", "deploy", "models"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""The chaos harness's figures: degraded seconds and failed requests per scenario (from
the load's results), the machine it ran on, and the printed table."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.chaos_load import NO_RESPONSE, REFUSED, Sent
from bench.loadgen import quantile

SLACK_MS = 50.0  # an answer later than deadline + this counts as degraded
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def degraded(s: Sent, deadline_ms: float, slack_ms: float = SLACK_MS) -> bool:
    """Not a 200, or a 200 later than the deadline plus the slack."""
    return s.status != 200 or s.latency_ms > deadline_ms + slack_ms


def degraded_seconds(sent: Iterable[Sent], start: float, end: float, deadline_ms: float) -> int:
    """How many whole seconds of [start, end) (wall s) had a degraded answer to a
    request due in them."""
    return len(
        {int(s.due - start) for s in sent if start <= s.due < end and degraded(s, deadline_ms)}
    )


def last_degraded_after(
    sent: Iterable[Sent], after: float, end: float, deadline_ms: float
) -> float:
    """Seconds from ``after`` to the due time of the last degraded request due in
    [after, end); 0.0 when none was: how long answers took to resume after ``after``."""
    late = [s.due - after for s in sent if after <= s.due < end and degraded(s, deadline_ms)]
    return round(max(late), 2) if late else 0.0


def timeline(sent: Iterable[Sent], start: float, end: float, deadline_ms: float) -> str:
    """One character per second of [start, end): ``.`` every answer in time, else the
    worst thing seen that second: ``x`` no response or refused, ``4`` a 504, ``3`` a
    503, ``e`` another status, ``l`` a 200 later than the deadline + slack."""
    rank = {".": 0, "l": 1, "e": 2, "3": 3, "4": 4, "x": 5}
    marks = ["."] * max(0, int(end - start + 0.999))
    for s in sent:
        if not start <= s.due < end or not degraded(s, deadline_ms):
            continue
        if s.status in (NO_RESPONSE, REFUSED):
            mark = "x"
        elif s.status == 200:
            mark = "l"
        else:
            mark = {504: "4", 503: "3"}.get(s.status, "e")
        i = int(s.due - start)
        if rank[mark] > rank[marks[i]]:
            marks[i] = mark
    return "".join(marks)


@dataclass(frozen=True)
class LoadFigures:
    requests: int
    ok: int
    degraded: int
    degraded_s: int
    no_response: int  # a connection, but no HTTP response (lost in flight)
    refused: int  # no connection at all (nothing listening)
    statuses: dict[int, int]
    p50_ms: float
    p99_ms: float


def load_figures(sent: Sequence[Sent], start: float, end: float, deadline_ms: float) -> LoadFigures:
    mine = [s for s in sent if start <= s.due < end]
    statuses: dict[int, int] = {}
    for s in mine:
        statuses[s.status] = statuses.get(s.status, 0) + 1
    ok = [s.latency_ms for s in mine if s.status == 200]
    return LoadFigures(
        requests=len(mine),
        ok=len(ok),
        degraded=sum(degraded(s, deadline_ms) for s in mine),
        degraded_s=degraded_seconds(mine, start, end, deadline_ms),
        no_response=statuses.get(NO_RESPONSE, 0),
        refused=statuses.get(REFUSED, 0),
        statuses=dict(sorted(statuses.items())),
        p50_ms=round(quantile(ok, 0.5), 1),
        p99_ms=round(quantile(ok, 0.99), 1),
    )


# -- the machine ---------------------------------------------------------------------


def cpu_times() -> tuple[int, int]:
    """(total, steal) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields), fields[7] if len(fields) > 7 else 0


def machine(steal_since: tuple[int, int] | None = None) -> dict[str, object]:
    """CPU model, the flags that matter for model code, cores, and the share of CPU time
    stolen by the hypervisor since ``steal_since`` (a ``cpu_times()`` reading)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    out: dict[str, object] = {
        "cpu": model,
        "flags": [f for f in FLAGS if f in flags],
        "cores": os.cpu_count(),
    }
    if steal_since is not None:
        total, steal = cpu_times()
        spent = total - steal_since[0]
        out["steal_pct"] = round(100.0 * (steal - steal_since[1]) / spent, 1) if spent else 0.0
    return out


# -- the table -----------------------------------------------------------------------

COLUMNS = (
    ("scenario", "scenario", 22),
    ("requests", "reqs", 6),
    ("degraded_s", "degr_s", 6),
    ("failed", "failed", 6),
    ("no_response", "no_resp", 7),
    ("refused", "refused", 7),
    ("double_replies", "dbl_rep", 7),
    ("double_decisions", "dbl_dec", 7),
    ("dead_letters", "DL got/exp", 10),
    ("other_dead_letters", "DL other", 8),
    ("exits", "exits", 5),
    ("p99_ms", "p99_ms", 8),
    ("note", "note", 0),
)


def table(rows: list[dict[str, object]]) -> str:
    head = "  ".join(f"{title:<{w}}" if w else title for _, title, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for key, _, width in COLUMNS:
            value = row.get(key, "")
            text = "" if value is None else str(value)
            cells.append(f"{text:<{width}}" if width else text)
        lines.append("  ".join(cells))
    return "\n".join(lines)

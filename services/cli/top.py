"""``rdv top``: a live view of the running platform from its processes' /metrics.

The processes are the stack file's (each one's /metrics beside its readiness URL) or
the ``--target NAME=URL`` ones. Every ``--interval`` all are read at once; the figures
(services.cli.topfigures) compare each read with the one before. ``--once`` reads twice,
an interval apart, prints once and exits; ``--json`` prints the figures as JSON (one
object per line without ``--once``).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.cli.topfigures import TopFigures, figures
from services.cli.topmetrics import Scrape, Snapshot
from services.common.errors import ConfigError, RendezvousError
from services.devstack.stack import load_stack

READ_TIMEOUT_S = 2.0


def run(args: argparse.Namespace) -> int:
    found = targets(args.target, args.stack)
    if args.once:
        before = first_read(found)
        time.sleep(args.interval)  # the window the rates are measured over
        show(figures(before, read(found)), json_out=args.json, title=_title(args))
        return 0
    try:
        return _live(found, args) if not args.json else _lines(found, args.interval)
    except KeyboardInterrupt:
        return 0


def targets(given: Sequence[str] | None, stack_file: Path) -> dict[str, str]:
    """Process name -> /metrics URL: the ``NAME=URL`` pairs given (a URL without a path
    means its /metrics), else every process of the stack file (its readiness URL's host
    and port)."""
    if given:
        out: dict[str, str] = {}
        for pair in given:
            name, sep, url = pair.partition("=")
            parts = urlsplit(url)
            if not sep or not name or parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"--target takes NAME=http://host:port[/path], not {pair!r}")
            if name in out:
                raise ConfigError(f"--target names {name!r} twice")
            out[name] = url if parts.path not in ("", "/") else metrics_url(url)
        return out
    return {spec.name: metrics_url(spec.ready) for spec in load_stack(stack_file)}


def metrics_url(url: str) -> str:
    """The /metrics URL of the server that answers ``url``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))


def read(found: Mapping[str, str], timeout_s: float = READ_TIMEOUT_S) -> Snapshot:
    """Every target's /metrics, read at the same time."""
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(found)))) as pool:
        scrapes = list(pool.map(lambda name: _scrape(name, found[name], timeout_s), found))
    return Snapshot.of(scrapes)


def first_read(found: Mapping[str, str]) -> Snapshot:
    """The first read; an error naming the targets when none answered."""
    snap = read(found)
    if not snap.samples:
        tried = ", ".join(f"{name} ({why})" for name, why in sorted(snap.down.items()))
        raise RendezvousError(
            "no process answered on /metrics (is the platform running? `rdv up` starts "
            f"it): {tried or 'none given'}"
        )
    return snap


def _scrape(name: str, url: str, timeout_s: float) -> Scrape:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - operator URL
            text = resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Scrape(name, time.monotonic(), None, f"{url}: {getattr(exc, 'reason', exc)}")
    return Scrape(name, time.monotonic(), text)


def show(figs: TopFigures, *, json_out: bool, title: str) -> None:
    if json_out:
        print(json.dumps(figs.as_json(), sort_keys=True), flush=True)
        return
    from rich.console import Console  # noqa: PLC0415 - only the table needs rich

    from services.cli.topview import render  # noqa: PLC0415

    Console().print(render(figs, title))


def _lines(found: Mapping[str, str], interval_s: float) -> int:
    before = first_read(found)
    while True:
        time.sleep(_until_next(before, interval_s))  # the refresh period
        after = read(found)
        show(figures(before, after), json_out=True, title="")
        before = after


def _live(found: Mapping[str, str], args: argparse.Namespace) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from services.cli.topview import render  # noqa: PLC0415

    before = first_read(found)
    console = Console()
    waiting = Text(f"reading {len(found)} processes every {args.interval:g} s ...")
    with Live(waiting, console=console, auto_refresh=False, screen=console.is_terminal) as live:
        while True:
            time.sleep(_until_next(before, args.interval))  # the refresh period
            after = read(found)
            live.update(render(figures(before, after), _title(args)), refresh=True)
            before = after


def _until_next(before: Snapshot, interval_s: float) -> float:
    started = min(before.at.values(), default=time.monotonic())
    return max(0.0, started + interval_s - time.monotonic())


def _title(args: argparse.Namespace) -> str:
    source = "targets" if args.target else str(args.stack)
    return f"rdv top ({source}; Ctrl-C quits)" if not args.once else f"rdv top ({source})"

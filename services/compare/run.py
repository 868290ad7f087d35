"""One comparison from start to end, as ``rdv compare`` and ``GET /v1/experiments/compare``
run it: the window from plain strings, the archive opened, the figures, the report."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from services.common.archive_files import connect
from services.common.errors import ConfigError
from services.common.policy import load_policies
from services.compare.counterfactual import would_choose
from services.compare.offpolicy import estimate
from services.compare.paired import Window, paired_figures
from services.compare.report import Report
from services.compare.sampled import sampled_rewards
from services.compare.signals import Span, drift_signals

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$", re.ASCII)
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MIN_MS, _MAX_MS = -(2**63), 2**63 - 1  # what the archive's int64 columns can compare with


def parse_time(text: str, now_ms: float) -> int:
    """Epoch ms from ``1767225600000`` (epoch ms), ``2026-11-26T10:00`` (ISO 8601, UTC
    unless it says otherwise) or ``30m`` / ``2h`` / ``7d`` (that long ago). Anything
    else, or a time outside int64 milliseconds, is a ConfigError (a 400 over HTTP)."""
    value = text.strip()
    try:
        ms = _epoch_ms(value, now_ms)
    except (ValueError, OverflowError):
        ms = None
    if ms is None or not _MIN_MS <= ms <= _MAX_MS:
        raise ConfigError(
            f"cannot read the time {text[:64]!r}: use epoch ms, ISO 8601 or e.g. 30m, 2h, 7d"
        )
    return ms


def _epoch_ms(value: str, now_ms: float) -> int:
    """``value`` as epoch ms; ValueError or OverflowError if it is no time."""
    if value.isascii() and value.isdigit():  # not "²": isdigit alone takes it, int() not
        return int(value)
    ago = _AGO.match(value)
    if ago:
        return int(now_ms - float(ago.group(1)) * _UNIT_MS[ago.group(2)])
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def window_from(query: Mapping[str, str], now_ms: float) -> Window:
    """A Window from ``champion``, ``challenger`` and optional ``endpoint``, ``since``,
    ``until`` strings (the CLI's options and the HTTP query alike)."""
    missing = [k for k in ("champion", "challenger") if not query.get(k)]
    if missing:
        raise ConfigError(f"compare needs {' and '.join(missing)}")
    since, until = query.get("since"), query.get("until")
    try:
        return Window(
            champion=query["champion"],
            challenger=query["challenger"],
            endpoint=query.get("endpoint") or None,
            since_ms=None if not since else parse_time(since, now_ms),
            until_ms=None if not until else parse_time(until, now_ms),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def drift_spans(
    window: Window, query: Mapping[str, str], now_ms: float
) -> tuple[Span, Span] | None:
    """(current, reference) spans for drift: the window itself (until now when open)
    against ``reference_since``..``reference_until``, by default the span of the same
    length just before it. None when the window has no start."""
    if window.since_ms is None:
        return None
    current = (float(window.since_ms), float(window.until_ms or now_ms))
    length = current[1] - current[0]
    ref_since, ref_until = query.get("reference_since"), query.get("reference_until")
    start = parse_time(ref_since, now_ms) if ref_since else current[0] - length
    end = parse_time(ref_until, now_ms) if ref_until else current[0]
    return current, (float(start), float(end))


def compare(
    archive: Path,
    window: Window,
    *,
    policies: Path | None = None,
    sample: int = 5000,
    drift: tuple[Span, Span] | None = None,
) -> Report:
    """The report over the archive under ``archive``. With ``policies`` (a policy folder
    that exists: a missing one is the server's setup, not the caller's error) and an
    endpoint in the window, also how often the policy files' policy would choose each
    model; with ``drift`` spans, the drift of the canary and detector outputs. A sampled
    model's figures are over the requests in its sample (paired.py, sampled.py)."""
    if not archive.is_dir():
        raise ConfigError(f"no archive at {archive} (the archive service writes it: make up)")
    con = connect(archive)
    try:
        report = Report(paired_figures(con, window))
        if policies is not None and policies.exists() and window.endpoint is not None:
            policy = load_policies(policies).get(window.endpoint)
            if policy is not None:
                report.would_choose = would_choose(con, window, policy, sample)
        if drift is not None:
            report.drift = drift_signals(con, drift[0], drift[1], window.endpoint)
        log = sampled_rewards(con, window)  # a sampled model's requests only (sampled.py)
        if log:
            report.off_policy = [
                estimate(window.champion, log),
                estimate(window.challenger, log),
            ]
    finally:
        con.close()
    return report

"""The two latency distributions side by side, as a small self-contained HTML page (inline
SVG, no scripts). Each panel is a histogram over shared bins, drawn from the model's
latency sketch: 200 evenly spaced quantiles, each standing for 0.5% of the answers."""

from __future__ import annotations

import html

from services.compare.report import Report
from services.compare.sketch import LatencySketch

BINS = 30
POINTS = 200
W, H, PAD = 420, 260, 36


def _points(sketch: LatencySketch) -> list[float]:
    values = [sketch.quantile((i + 0.5) / POINTS) for i in range(POINTS)]
    return [v for v in values if v is not None]


def _panel(title: str, values: list[float], low: float, high: float, colour: str) -> str:
    width = (high - low) / BINS or 1.0
    counts = [0] * BINS
    for v in values:
        counts[min(BINS - 1, max(0, int((v - low) / width)))] += 1
    top = max(counts) or 1
    bar = (W - 2 * PAD) / BINS
    bars = "".join(
        f'<rect x="{PAD + i * bar:.1f}" y="{H - PAD - (c / top) * (H - 2 * PAD):.1f}" '
        f'width="{bar - 1:.1f}" height="{(c / top) * (H - 2 * PAD):.1f}" fill="{colour}"/>'
        for i, c in enumerate(counts)
    )
    axis = (
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>'
        f'<text x="{PAD}" y="{H - 12}" font-size="11">{low:.0f} ms</text>'
        f'<text x="{W - PAD}" y="{H - 12}" font-size="11" text-anchor="end">{high:.0f} ms</text>'
        f'<text x="{W / 2}" y="18" font-size="13" text-anchor="middle">{html.escape(title)}</text>'
    )
    return f'<svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">{bars}{axis}</svg>'


def latency_chart(report: Report) -> str:
    """The HTML page."""
    p = report.paired
    a, b = _points(p.champion.latency), _points(p.challenger.latency)
    every = a + b
    low, high = (min(every), max(every)) if every else (0.0, 1.0)
    panels = []
    for figures, values, colour in ((p.champion, a, "#4c72b0"), (p.challenger, b, "#dd8452")):
        q = figures.latency.quantiles()
        title = f"{figures.model}: p50 {_ms(q['p50'])}, p99 {_ms(q['p99'])} ({figures.ok} ok)"
        panels.append(_panel(title, values, low, high, colour))
    verdict = "".join(f"<li>{html.escape(line)}</li>" for line in report.verdict())
    return (
        "<!doctype html><meta charset='utf-8'><title>rdv compare</title>"
        "<body style='font-family:sans-serif'>"
        f"<h3>{html.escape(p.window.champion)} vs {html.escape(p.window.challenger)}: "
        f"latency on {p.paired} paired requests</h3>"
        f"<div style='display:flex;gap:16px'>{''.join(panels)}</div>"
        f"<ul>{verdict}</ul></body>\n"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"

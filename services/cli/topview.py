"""``rdv top``'s figures as rich tables: endpoints, answers, models, consumer groups."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from services.cli.topfigures import TopFigures

NONE = "-"


def render(figs: TopFigures, title: str) -> Group:
    """The whole view: a header line, then one table per kind of figure."""
    parts: list[Table | Text] = [_header(figs, title)]
    parts.append(_endpoints(figs))
    if any(e.answers for e in figs.endpoints):
        parts.append(_answers(figs))
    if figs.models:
        parts.append(_models(figs))
    if figs.groups:
        parts.append(_groups(figs))
    return Group(*parts)


def _header(figs: TopFigures, title: str) -> Text:
    text = Text(f"{title}  ", style="bold")
    text.append(f"{len(figs.targets)} processes read, over {figs.seconds:.1f} s")
    for name, why in figs.down.items():
        text.append(f"\n  {name} down: {why}", style="red")
    return text


def _endpoints(figs: TopFigures) -> Table:
    table = Table(title="endpoints", title_justify="left", expand=True)
    for name in ("endpoint", "req/s", "requests", "misses/s", "misses", "504", "p50 ms", "p99 ms"):
        table.add_column(name, justify="left" if name == "endpoint" else "right")
    for e in figs.endpoints:
        table.add_row(
            e.endpoint,
            f"{e.requests_per_s:.1f}",
            str(e.requests),
            f"{e.deadline_misses_per_s:.1f}",
            Text(str(e.deadline_misses), style="red" if e.deadline_misses else ""),
            str(e.gateway_timeouts),
            _num(e.p50_ms if e.p50_ms is not None else e.p50_ms_all),
            _num(e.p99_ms if e.p99_ms is not None else e.p99_ms_all),
        )
    table.caption = "p50/p99: gateway latency in the window, else since start"
    return table


def _answers(figs: TopFigures) -> Table:
    table = Table(title="answers by model and reason", title_justify="left", expand=True)
    for name in ("endpoint", "model", "reason", "answers/s", "answers"):
        table.add_column(name, justify="right" if name.startswith("answers") else "left")
    for e in figs.endpoints:
        for a in e.answers:
            table.add_row(e.endpoint, a.model, a.reason, f"{a.per_s:.1f}", str(a.count))
    return table


def _models(figs: TopFigures) -> Table:
    table = Table(title="models", title_justify="left", expand=True)
    columns = ("model", "lag", "infl", "ok/s", "err/s", "errs", "skip", "fill", "wait", "budget")
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right")
    table.caption = (
        "lag: records its group has not committed; infl: requests in the model now; fill: "
        "mean batch / max size; wait, budget (s): the latest batch's oldest request's wait "
        "and its most urgent one's deadline left, when read"
    )
    for m in figs.models:
        fill = m.batch_fill if m.batch_fill is not None else m.batch_fill_all
        table.add_row(
            m.model,
            Text(_num(m.lag), style="yellow" if m.lag else ""),
            _num(m.in_flight),
            f"{m.scored_per_s:.1f}",
            f"{m.errors_per_s:.1f}",
            Text(str(m.errors), style="red" if m.errors else ""),
            str(m.skipped),
            NONE if fill is None else f"{fill:.0%}",
            _num(m.oldest_wait_s),
            _num(m.deadline_left_s),
        )
    return table


def _groups(figs: TopFigures) -> Table:
    table = Table(title="consumer groups", title_justify="left", expand=True)
    for name in ("group", "topic", "partitions", "lag"):
        table.add_column(name, justify="right" if name in ("partitions", "lag") else "left")
    for g in figs.groups:
        table.add_row(g.group, g.topic, str(g.partitions), str(g.lag))
    return table


def _num(value: float | None) -> str:
    if value is None:
        return NONE
    return str(value) if isinstance(value, int) else f"{value:.3g}"

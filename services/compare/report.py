"""The compare report: paired figures with intervals, a verdict per figure, and the two
renderings (a terminal table and JSON).

A model is *ahead* on a rate only when the two 95% intervals do not overlap, and on a
latency quantile only when the two differ by more than ``LATENCY_MARGIN`` (the sketch
itself is within 1%); otherwise the verdict says the difference is not clear.

Per model, ``sample`` gives the share of the window's requests it scored (observed,
with an interval) and the share it was configured to score: a sampled model's figures
are over the requests in its sample (services.compare.paired).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.compare.drift import Drift
from services.compare.intervals import Interval, wilson
from services.compare.offpolicy import OffPolicy
from services.compare.paired import ModelFigures, Paired, SampleFigures

LATENCY_MARGIN = 0.05
QUANTILES = ("p50", "p90", "p99")


@dataclass
class Report:
    """Everything ``rdv compare`` shows."""

    paired: Paired
    would_choose: dict[str, Interval] = field(default_factory=dict)  # the policy files' policy
    off_policy: list[OffPolicy] = field(default_factory=list)
    drift: dict[str, Drift] = field(default_factory=dict)  # what -> drift

    def rates(self, figures: ModelFigures) -> dict[str, Interval]:
        n = self.paired.paired
        return {
            "within_deadline": wilson(figures.within_deadline, n),
            "error_rate": wilson(figures.errors, n),
            "skip_rate": wilson(figures.skipped, n),
            "chosen": wilson(figures.chosen, n),
        }

    def verdict(self) -> list[str]:
        """One line per figure: which model is ahead, or that it is not clear."""
        p = self.paired
        a, b = p.champion, p.challenger
        if p.paired == 0:
            return ["no request was scored by both models in this window"]
        lines = [self._latency_line(q, a, b) for q in QUANTILES]
        ra, rb = self.rates(a), self.rates(b)
        lines.append(_rate_line("within the deadline", ra, rb, a.model, b.model, higher=True))
        lines.append(
            _rate_line("error rate", ra, rb, a.model, b.model, higher=False, key="error_rate")
        )
        for estimate_a, estimate_b in _pairs(self.off_policy, a.model, b.model):
            lines.append(
                _ahead(
                    "estimated reward (SNIPS)",
                    estimate_a.snips,
                    estimate_b.snips,
                    a.model,
                    b.model,
                    higher=True,
                )
            )
        for what, found in self.drift.items():
            state = "DRIFT" if found.alert else "stable"
            lines.append(f"{what}: {state} (PSI {found.psi:.3f}, KS {found.ks:.3f})")
        return lines

    def _latency_line(self, q: str, a: ModelFigures, b: ModelFigures) -> str:
        va, vb = a.latency.quantiles().get(q), b.latency.quantiles().get(q)
        if va is None or vb is None:
            return f"latency {q}: not enough ok answers to compare"
        low, high = sorted((va, vb))
        if high - low <= LATENCY_MARGIN * max(high, 1e-9):
            return f"latency {q}: level ({va:.1f} vs {vb:.1f} ms)"
        winner = a.model if va < vb else b.model
        return f"latency {q}: {winner} is faster ({a.model} {va:.1f} ms, {b.model} {vb:.1f} ms)"

    def as_dict(self) -> dict[str, Any]:
        p = self.paired
        out: dict[str, Any] = {
            "window": {
                "champion": p.window.champion,
                "challenger": p.window.challenger,
                "endpoint": p.window.endpoint,
                "since_ms": p.window.since_ms,
                "until_ms": p.window.until_ms,
            },
            "paired": p.paired,
            "only_champion": p.only_champion,
            "only_challenger": p.only_challenger,
            "models": {m.model: self._model_dict(m) for m in (p.champion, p.challenger)},
            "agreement": {
                "both_ok": p.both_ok,
                "exact": wilson(p.exact_agreement, p.both_ok).as_dict(),
                "mean_similarity": p.mean_similarity,
                "challenger_faster": wilson(p.challenger_faster, p.both_ok).as_dict(),
            },
            "ood": {
                "checked": p.ood_checked,
                "flagged": wilson(p.ood_flagged, p.ood_checked).as_dict(),
            },
            "off_policy": [e.as_dict() for e in self.off_policy],
            "drift": {k: v.as_dict() for k, v in self.drift.items()},
            "verdict": self.verdict(),
        }
        return out

    def _model_dict(self, m: ModelFigures) -> dict[str, Any]:
        return {
            "ok": m.ok,
            "latency_ms": m.latency.quantiles(),
            "latency_count": m.latency.count,
            **{k: v.as_dict() for k, v in self.rates(m).items()},
            "would_choose": (
                self.would_choose[m.model].as_dict() if m.model in self.would_choose else None
            ),
            "mean_output_chars": m.mean_output_chars,
            "sample": _sample_dict(m.sample),
        }

    def table(self) -> str:
        """The report as aligned text for a terminal."""
        p = self.paired
        a, b = p.champion, p.challenger
        rows: list[tuple[str, str, str]] = [
            ("", f"{a.model} (champion)", f"{b.model} (challenger)")
        ]
        for q in QUANTILES:
            rows.append(
                (
                    f"latency {q} (ms)",
                    _ms(a.latency.quantile(_q(q))),
                    _ms(b.latency.quantile(_q(q))),
                )
            )
        ra, rb = self.rates(a), self.rates(b)
        labels = {
            "within_deadline": "within deadline",
            "error_rate": "errors",
            "skip_rate": "skipped",
            "chosen": "chosen (as decided)",
        }
        for key, label in labels.items():
            rows.append((label, _share(ra[key]), _share(rb[key])))
        if self.would_choose:
            rows.append(
                (
                    "chosen (policy files)",
                    _share(self.would_choose.get(a.model)),
                    _share(self.would_choose.get(b.model)),
                )
            )
        rows.append(("output chars (mean)", _num(a.mean_output_chars), _num(b.mean_output_chars)))
        for estimate in self.off_policy:
            side = 1 if estimate.model == a.model else 2
            cells = ["est. reward (SNIPS)", "", ""]
            cells[side] = f"{_interval(estimate.snips)} (ESS {estimate.effective_sample_size:.0f})"
            rows.append((cells[0], cells[1], cells[2]))
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}" for r in rows]
        both = p.both_ok
        lines += [
            "",
            f"paired requests: {p.paired} (only {a.model}: {p.only_champion}, "
            f"only {b.model}: {p.only_challenger})",
            f"agreement where both answered ({both}): "
            f"exact {_share(wilson(p.exact_agreement, both))}, "
            f"mean similarity {_num(p.mean_similarity, 3)}; "
            f"{b.model} faster on {_share(wilson(p.challenger_faster, both))}",
            f"OOD flagged: {_share(wilson(p.ood_flagged, p.ood_checked))} "
            f"of {p.ood_checked} checked",
            *_sample_lines(a, b),
            "",
            "verdict:",
            *(f"  - {line}" for line in self.verdict()),
        ]
        return "\n".join(lines)


def _sample_dict(sample: SampleFigures | None) -> dict[str, Any] | None:
    if sample is None:
        return None
    return {
        "configured": sample.configured_share,
        "configured_values": list(sample.configured),
        "observed": wilson(sample.in_sample, sample.seen).as_dict(),
    }


def _sample_lines(*models: ModelFigures) -> list[str]:
    """A line per sampled model (one that left a request out): its shares."""
    lines = []
    for m in models:
        sample = m.sample
        if sample is None or sample.in_sample == sample.seen:
            continue
        configured = sample.configured_share
        named = "changed" if configured is None else f"{configured:.1%}"
        lines.append(
            f"{m.model} is sampled: configured {named}, scored "
            f"{_share(wilson(sample.in_sample, sample.seen))} of {sample.seen} requests "
            "(its figures are over its sample)"
        )
    return lines


def _pairs(estimates: list[OffPolicy], a: str, b: str) -> list[tuple[OffPolicy, OffPolicy]]:
    by_model = {e.model: e for e in estimates}
    return [(by_model[a], by_model[b])] if a in by_model and b in by_model else []


def _rate_line(
    what: str,
    ra: dict[str, Interval],
    rb: dict[str, Interval],
    a: str,
    b: str,
    *,
    higher: bool,
    key: str = "within_deadline",
) -> str:
    return _ahead(what, ra[key], rb[key], a, b, higher=higher)


def _ahead(what: str, ia: Interval, ib: Interval, a: str, b: str, *, higher: bool) -> str:
    text = f"{a} {_interval(ia)}, {b} {_interval(ib)}"
    if ia.n == 0 or ib.n == 0:
        return f"{what}: no data"
    best_a = ia.above(ib) if higher else ib.above(ia)
    best_b = ib.above(ia) if higher else ia.above(ib)
    if best_a:
        return f"{what}: {a} is ahead ({text})"
    if best_b:
        return f"{what}: {b} is ahead ({text})"
    return f"{what}: no clear difference ({text})"


def _q(name: str) -> float:
    return float(name[1:]) / 100.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(interval: Interval | None) -> str:
    if interval is None or interval.n == 0:
        return "-"
    return f"{interval.value:.1%} [{interval.low:.1%}, {interval.high:.1%}]"


def _interval(interval: Interval) -> str:
    if interval.n == 0 or interval.value != interval.value:
        return "-"
    return f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"

"""The arithmetic of bench.chat_e2e: streamed answers as their client saw them turned
into time to first token, inter-token latency and tokens/s, and one request's record
timestamps turned into its hops (no broker, no model: unit-tested alone)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import quantile

CLINC150_TRAIN = Path(__file__).resolve().parents[1] / "models" / "ood" / "clinc150" / "train.jsonl"


def prompts(count: int, path: Path = CLINC150_TRAIN) -> list[str]:
    """``count`` CLINC150 in-scope training queries, spread evenly over the file (the
    OOD detector was fitted on them; bench.chat_e2e still drops any it flags)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts = [str(r["text"]) for r in rows if r.get("intent") != "oos"]
    if len(texts) < count:
        raise ValueError(f"{path} has {len(texts)} in-scope queries, fewer than {count}")
    step = len(texts) // count
    return [texts[i * step] for i in range(count)]


@dataclass(frozen=True)
class Stream:
    """One streamed answer as its client saw it, on one clock (seconds): when the
    request was sent and when each piece of text arrived; ``tokens`` the answer's
    completion tokens (the usage the server reported)."""

    sent_s: float
    texts_s: tuple[float, ...]
    tokens: int
    request_id: str = ""

    @property
    def ttft_s(self) -> float | None:
        return self.texts_s[0] - self.sent_s if self.texts_s else None

    @property
    def gaps_s(self) -> list[float]:
        """The time between successive pieces of text (the inter-token latencies)."""
        return [b - a for a, b in zip(self.texts_s, self.texts_s[1:], strict=False)]


def figures(streams: list[Stream], took_s: float) -> dict[str, float]:
    """One load level: time to first token and inter-token latency p50/p99 (ms, over
    every request and every gap between pieces of text), tokens/s over the level's
    wall time, and the counts."""
    if took_s <= 0:
        raise ValueError(f"a level's wall time must be positive, not {took_s}")
    ttft = [s.ttft_s * 1000 for s in streams if s.ttft_s is not None]
    gaps = [g * 1000 for s in streams for g in s.gaps_s]
    tokens = sum(s.tokens for s in streams)
    return {
        "ttft_p50_ms": round(quantile(ttft, 0.5), 1),
        "ttft_p99_ms": round(quantile(ttft, 0.99), 1),
        "itl_p50_ms": round(quantile(gaps, 0.5), 1),
        "itl_p99_ms": round(quantile(gaps, 0.99), 1),
        "tokens_per_s": round(tokens / took_s, 2),
        "requests": len(streams),
        "no_text": len(streams) - len(ttft),
        "tokens": tokens,
        "seconds": round(took_s, 2),
    }


@dataclass(frozen=True)
class Marks:
    """One streamed request's moments (epoch ms, one clock: every process on this
    machine): the client sent it; the gateway produced it (``created``); the detector's
    worker got, started and finished it and its score reached the rendezvous
    (``ood_in``); the rendezvous granted the stream; the champion's worker got it and
    produced its first delta; the client read the first piece of text."""

    sent: float
    created: float
    ood_received: float
    ood_started: float
    ood_finished: float
    ood_in: float
    granted: float
    champ_received: float
    first_delta: float
    first_text: float


HOPS = (
    "client_to_gateway",
    "gateway_to_detector",
    "detector_predicts",
    "detector_to_rendezvous",
    "rendezvous_grants",
    "created_to_grant",
    "gateway_to_champion",
    "created_to_first_delta",
    "first_token_waits_for_grant",
    "ready_to_client",
    "ttft",
)
"""The hops, in the order of the path; ``ready_to_client`` is from the later of the
grant and the first delta (both must reach the gateway) to the client's first text."""


def hops_of(m: Marks) -> dict[str, float]:
    ready = max(m.granted, m.first_delta)
    return {
        "client_to_gateway": m.created - m.sent,
        "gateway_to_detector": m.ood_received - m.created,
        "detector_predicts": m.ood_finished - m.ood_started,
        "detector_to_rendezvous": m.ood_in - m.ood_finished,
        "rendezvous_grants": m.granted - m.ood_in,
        "created_to_grant": m.granted - m.created,
        "gateway_to_champion": m.champ_received - m.created,
        "created_to_first_delta": m.first_delta - m.created,
        "first_token_waits_for_grant": max(0.0, m.granted - m.first_delta),
        "ready_to_client": m.first_text - ready,
        "ttft": m.first_text - m.sent,
    }


def hop_medians(marks: list[Marks]) -> dict[str, float]:
    """The median of each hop over ``marks`` (ms; NaN for none), and ``grant_later``:
    the share of requests whose grant came after their first delta (the OOD gate on
    the critical path)."""
    rows = [hops_of(m) for m in marks]
    out = {
        h: round(statistics.median(r[h] for r in rows), 1) if rows else float("nan") for h in HOPS
    }
    later = sum(1 for m in marks if m.granted > m.first_delta)
    out["grant_later"] = round(later / len(marks), 2) if marks else float("nan")
    out["requests"] = len(marks)
    return out

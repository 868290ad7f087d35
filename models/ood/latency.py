"""Per-request latency of a detector: embedding and scoring, alone and in batches.

Single requests are timed one by one (p50/p99 over ``requests`` texts); batches of
each size are timed whole and reported per request (batch time / batch size) as a
worker sees them when requests queue up. Wall-clock, on whatever threads torch uses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from models.ood.detector import OodDetector

LatencyReport = dict[str, dict[str, float]]


def _ms(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def measure_latency(
    detector: OodDetector,
    texts: Sequence[str],
    *,
    requests: int = 200,
    batch_sizes: Sequence[int] = (8, 32),
    warmup: int = 5,
) -> LatencyReport:
    """``{"single": {...}, "batch_<n>": {...}}`` in milliseconds."""
    if not texts:
        raise ValueError("no texts to time")
    pool = [texts[i % len(texts)] for i in range(max(requests, warmup))]
    for text in pool[:warmup]:
        detector.scorer.score(detector.encoder.encode([text]))
    embed_s: list[float] = []
    score_s: list[float] = []
    total_s: list[float] = []
    for text in pool[:requests]:
        t0 = time.perf_counter()
        x = detector.encoder.encode([text])
        t1 = time.perf_counter()
        detector.scorer.score(x)
        t2 = time.perf_counter()
        embed_s.append(t1 - t0)
        score_s.append(t2 - t1)
        total_s.append(t2 - t0)
    report: LatencyReport = {"single": {}}
    for name, samples in (("embed", embed_s), ("score", score_s), ("total", total_s)):
        p50, p99 = _ms(samples)
        report["single"] |= {f"{name}_p50": p50, f"{name}_p99": p99}
    for size in batch_sizes:
        report[f"batch_{size}"] = _batch(detector, pool, size)
    return report


def _batch(detector: OodDetector, pool: list[str], size: int) -> dict[str, float]:
    batches = [pool[i : i + size] for i in range(0, len(pool) - size + 1, size)] or [pool[:size]]
    embed_s: list[float] = []
    total_s: list[float] = []
    for batch in batches:
        t0 = time.perf_counter()
        x = detector.encoder.encode(batch)
        t1 = time.perf_counter()
        detector.scorer.score(x)
        t2 = time.perf_counter()
        embed_s.append(t1 - t0)
        total_s.append(t2 - t0)
    embed_p50, _ = _ms(embed_s)
    total_p50, total_p99 = _ms(total_s)
    return {
        "batches": float(len(batches)),
        "per_request_embed_p50": embed_p50 / size,
        "per_request_total_p50": total_p50 / size,
        "batch_total_p50": total_p50,
        "batch_total_p99": total_p99,
    }

"""In-memory DuckDB tables shaped like the archive's views (only the columns compare
reads), for the compare tests. No tests here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms


@dataclass
class Archive:
    """Rows to load: requests, scores, decisions (with the decision's OOD status)."""

    requests: list[tuple[object, ...]] = field(default_factory=list)
    scores: list[tuple[object, ...]] = field(default_factory=list)
    decisions: list[tuple[object, ...]] = field(default_factory=list)

    def request(
        self, rid: str, *, at: int = 0, deadline: int = 1000, endpoint: str = "chat"
    ) -> None:
        self.requests.append((rid, endpoint, T0 + at, T0 + at + deadline, None))

    def score(
        self,
        rid: str,
        model: str,
        latency_ms: float,
        *,
        status: str = "ok",
        text: str | None = "answer",
        at: int = 0,
        endpoint: str = "chat",
        error: str | None = None,
    ) -> None:
        output = json.dumps({"text": text}) if status == "ok" else None
        self.scores.append((rid, endpoint, model, status, output, T0 + at + latency_ms, error))

    def decision(
        self,
        rid: str,
        chosen: str | None,
        *,
        propensity: float = 1.0,
        ood: str | None = None,
        endpoint: str = "chat",
    ) -> None:
        self.decisions.append((rid, endpoint, chosen, "x", propensity, ood, 1.0))

    def connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect()
        for name, columns, rows in (
            ("requests", REQUESTS, self.requests),
            ("scores", SCORES, self.scores),
            ("decisions", DECISIONS, self.decisions),
        ):
            values = list(zip(*rows, strict=True)) if rows else [[] for _ in columns]
            table = pa.table(
                [pa.array(v, type=t) for v, t in zip(values, columns.values(), strict=True)],
                names=list(columns),
            )
            con.register(f"{name}_rows", table)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_rows")
        return con


REQUESTS = {
    "request_id": pa.string(),
    "endpoint": pa.string(),
    "created_ms": pa.int64(),
    "deadline_ms": pa.int64(),
    "replay": pa.string(),
}
SCORES = {
    "request_id": pa.string(),
    "endpoint": pa.string(),
    "model": pa.string(),
    "status": pa.string(),
    "output": pa.string(),
    "finished_ms": pa.float64(),
    "error": pa.string(),
}
DECISIONS = {
    "request_id": pa.string(),
    "endpoint": pa.string(),
    "chosen_model": pa.string(),
    "reason": pa.string(),
    "propensity": pa.float64(),
    "ood_status": pa.string(),
    "ood_score": pa.float64(),
}

"""A small archive on disk in the archive's own Parquet layout (services.common.
archive_files), for the tests of the promotion gate and policy evaluation: rows are
given with only the columns a test cares about; the rest get nulls or zeros. No tests
here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from services.common.archive_files import DECISIONS, FEEDBACK, KINDS, REQUESTS, SCHEMAS, SCORES

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms


@dataclass
class ArchiveRows:
    """Rows per kind, written under ``root`` by ``write``."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def request(
        self,
        rid: str,
        *,
        at: int = 0,
        deadline: int = 1000,
        endpoint: str = "demo",
        attributes: dict[str, str] | None = None,
    ) -> None:
        self._add(
            REQUESTS,
            request_id=rid,
            endpoint=endpoint,
            created_ms=T0 + at,
            deadline_ms=T0 + at + deadline,
            attributes=list((attributes or {}).items()),
        )

    def score(
        self,
        rid: str,
        model: str,
        latency_ms: float,
        *,
        status: str = "ok",
        at: int = 0,
        role: str = "challenger",
        endpoint: str = "demo",
    ) -> None:
        output = json.dumps({"text": model}) if status == "ok" else None
        self._add(
            SCORES,
            request_id=rid,
            endpoint=endpoint,
            model=model,
            role=role,
            status=status,
            output=output,
            finished_ms=float(T0 + at + latency_ms),
        )

    def decision(
        self,
        rid: str,
        chosen: str | None,
        *,
        propensity: float = 1.0,
        version: int = 1,
        endpoint: str = "demo",
        reason: str | None = None,
    ) -> None:
        self._add(
            DECISIONS,
            request_id=rid,
            endpoint=endpoint,
            chosen_model=chosen,
            propensity=propensity,
            policy_version=version,
            reason=reason,
        )

    def feedback(self, rid: str, reward: float, *, at: float = 0.0) -> None:
        self._add(FEEDBACK, request_id=rid, reward=reward, received_ms=float(T0 + at))

    def write(self, root: Path) -> Path:
        """Every kind's rows as one Parquet file under ``root``; returns ``root``."""
        for kind in KINDS:
            if not self.rows[kind]:
                continue
            folder = root / kind / "date=2026-01-01" / "hour=00"
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(self.rows[kind], schema=SCHEMAS[kind])
            pq.write_table(table, folder / "part-0.parquet")
        return root

    def _add(self, kind: str, **values: Any) -> None:
        row: dict[str, Any] = {}
        for f in SCHEMAS[kind]:
            if f.name in values:
                row[f.name] = values[f.name]
            elif f.name == "offset":
                row[f.name] = len(self.rows[kind])
            elif not f.nullable:
                row[f.name] = "" if pa.types.is_string(f.type) else 0
            else:
                row[f.name] = None
        self.rows[kind].append(row)

"""Which archived requests to replay, and when: read from the archive's ``requests``
view (replays of replays are left out), in creation order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

from services.common.archive_files import connect
from services.common.errors import ConfigError

_SELECT = """
SELECT request_id, endpoint, payload, created_ms, deadline_ms, trace_id
FROM requests
WHERE replay IS NULL
  AND ($endpoint IS NULL OR endpoint = $endpoint)
  AND ($since IS NULL OR created_ms >= $since)
  AND ($until IS NULL OR created_ms < $until)
ORDER BY created_ms, request_id
LIMIT $limit
"""


@dataclass(frozen=True, slots=True)
class Archived:
    """One archived request, as the models saw it."""

    request_id: str
    endpoint: str
    payload: JsonValue
    created_ms: int
    budget_ms: int  # deadline minus creation: the replay gets the same time
    trace_id: str


def load_requests(
    archive: Path,
    *,
    endpoint: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 1_000_000,
) -> list[Archived]:
    """The archived (non-replayed) requests that match, oldest first."""
    if not archive.is_dir():
        raise ConfigError(f"no archive at {archive} (the archive service writes it: make up)")
    con = connect(archive)
    try:
        params = {"endpoint": endpoint, "since": since_ms, "until": until_ms, "limit": limit}
        rows = con.execute(_SELECT, params).fetchall()
    finally:
        con.close()
    return [
        Archived(
            rid,
            ep,
            None if payload is None else json.loads(payload),
            created,
            deadline - created,
            trace,
        )
        for rid, ep, payload, created, deadline, trace in rows
    ]


def offsets_ms(requests: list[Archived], speed: float | None) -> list[float]:
    """When to send each request, in ms after the start: the original spacing divided by
    ``speed`` (1.0 = original timing), or all at once (``None``: as fast as possible)."""
    if not requests or speed is None:
        return [0.0] * len(requests)
    if speed <= 0:
        raise ConfigError(f"speed must be positive, not {speed}")
    first = requests[0].created_ms
    return [(r.created_ms - first) / speed for r in requests]

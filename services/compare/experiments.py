"""``GET /v1/experiments/compare`` on the compare service's port: ``rdv compare`` as JSON.

Query parameters as the command's options: ``champion``, ``challenger`` (required),
``endpoint``, ``since``, ``until``, ``reference_since``, ``reference_until`` (epoch ms,
ISO 8601, or e.g. ``2h``). 200 with the report's JSON; 400 with
``{"error": {"code": "invalid_request", "message"}}`` for bad parameters.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from services.common.clock import wall_ms
from services.common.errors import ConfigError
from services.common.ops import Route
from services.compare import metrics
from services.compare.run import compare, drift_spans, window_from

log = logging.getLogger("rdv.compare")
PATH = "/v1/experiments/compare"
JSON = "application/json"


def compare_route(archive: Path, policies: Path | None) -> Route:
    """The handler, reading the archive under ``archive``."""

    def handle(query: dict[str, str]) -> tuple[int, bytes, str]:
        status, body = _answer(archive, policies, query)
        metrics.REPORTS.labels(str(status)).inc()
        return status, json.dumps(body).encode(), JSON

    return handle


def _answer(archive: Path, policies: Path | None, query: dict[str, str]) -> tuple[int, object]:
    now = wall_ms()
    try:
        window = window_from(query, now)
        report = compare(archive, window, policies=policies, drift=drift_spans(window, query, now))
    except ConfigError as exc:
        return 400, {"error": {"code": "invalid_request", "message": str(exc)}}
    except Exception:
        log.exception("compare failed", extra={"query": query})
        return 500, {
            "error": {"code": "internal_error", "message": "compare failed (see the logs)"}
        }
    return 200, report.as_dict()

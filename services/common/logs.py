"""Structured logs: one JSON object per line on stderr.

Use the standard library: ``log.info("event name", extra={"field": value})``; every
``extra`` field becomes a key of the JSON line. No secret reaches a line: fields with a
credential's name (``password``, ``api_key``...) are hidden whole, and the finished line
goes through ``services.common.redact`` (registered secrets, ``Bearer <token>``...).
"""

from __future__ import annotations

import json
import logging
import sys
import time

from services.common.redact import REDACTED, redact, sensitive_name

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with ts, level, service, logger, msg and the extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            k: REDACTED if sensitive_name(k) else v
            for k, v in vars(record).items()
            if k not in _STANDARD
        }
        line.update(  # the fixed fields win over extras of the same name
            ts=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            level=record.levelname.lower(),
            service=self.service,
            logger=record.name,
            msg=record.getMessage(),
        )
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines (call once, from main)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

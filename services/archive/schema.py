"""The row each message becomes in the archive's tables (their schemas and kinds are the
files' contract: services.common.archive_files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from services.common.archive_files import DECISIONS, FEEDBACK, REQUESTS, SCHEMAS, SCORES
from services.common.kafka import Record
from services.common.messages import (
    REPLAY,
    Decision,
    ErrorBody,
    Feedback,
    RequestEnvelope,
    Score,
)

Row = tuple[Any, ...]
"""One row: the values of a kind's schema, in order."""


def json_text(value: object) -> str | None:
    """Compact JSON of a JSON value; None stays None (SQL null)."""
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def error_text(error: ErrorBody | None) -> str | None:
    """A score's error as the ``error`` column keeps it: ``"[code] message"``.

    Kept as one text column, in the form workers wrote before errors were typed, rather
    than split into a new ``error_code`` column: every archive file, older or newer,
    then holds the same thing in the same column, so queries and readers need no case
    for mixed files, and ``services.common.messages.error_from_text`` reads the code
    back (a plain-text error of an older worker reads as ``model_error``)."""
    return None if error is None else f"[{error.code}] {error.message}"


def _source(rec: Record, archived_ms: int) -> Row:
    return (rec.topic, rec.partition, rec.offset, record_ms(rec, archived_ms), archived_ms)


def record_ms(rec: Record, archived_ms: int) -> int:
    """When the record was written to the stream (the archive's time if unknown)."""
    return rec.timestamp_ms if rec.timestamp_ms > 0 else archived_ms


def request_row(msg: RequestEnvelope, rec: Record, archived_ms: int) -> Row:
    return (
        msg.request_id,
        msg.endpoint,
        json_text(msg.payload),
        list(msg.attributes.items()),
        msg.created_ms,
        msg.deadline_epoch_ms,
        msg.trace_id,
        msg.attributes.get(REPLAY),  # the replay's mark (services.replay)
        msg.return_address.topic,
        msg.return_address.partition,
        msg.v,
        *_source(rec, archived_ms),
    )


def score_row(msg: Score, rec: Record, archived_ms: int) -> Row:
    t = msg.timings
    return (
        msg.request_id,
        msg.endpoint,
        msg.model,
        msg.model_version,
        msg.role.value,
        msg.status.value,
        json_text(msg.output),
        error_text(msg.error),
        t.received_ms,
        t.started_ms,
        t.finished_ms,
        msg.v,
        *_source(rec, archived_ms),
    )


def decision_row(msg: Decision, rec: Record, archived_ms: int) -> Row:
    ood = msg.ood
    return (
        msg.request_id,
        msg.endpoint,
        msg.chosen_model,
        msg.reason,
        msg.in_time,
        msg.late,
        list(msg.latencies_ms.items()),
        msg.elapsed_ms,
        msg.decided_ms,
        msg.propensity,
        msg.policy_version,
        None if ood is None else ood.status,
        None if ood is None else ood.detector,
        None if ood is None else ood.score,
        msg.streamed,
        msg.arm,
        msg.bucket,
        msg.learned_version,
        msg.v,
        *_source(rec, archived_ms),
    )


def feedback_row(msg: Feedback, rec: Record, archived_ms: int) -> Row:
    return (
        msg.request_id,
        msg.reward,
        msg.label,
        msg.received_ms,
        msg.v,
        *_source(rec, archived_ms),
    )


ROW_BUILDERS: dict[str, Callable[[Any, Record, int], Row]] = {
    REQUESTS: request_row,
    SCORES: score_row,
    DECISIONS: decision_row,
    FEEDBACK: feedback_row,
}


Key = tuple[str, str, str]
"""What makes a row unique: (kind, request id, model); see dedup_key."""


def dedup_key(kind: str, msg: RequestEnvelope | Score | Decision | Feedback) -> Key:
    """What makes a row unique: (kind, request id, model); model is "" but for scores.
    Feedback: (kind, request id, when the gateway took it): a client may send several."""
    if isinstance(msg, Feedback):
        return (kind, msg.request_id, repr(msg.received_ms))
    return (kind, msg.request_id, msg.model if isinstance(msg, Score) else "")


def to_table(kind: str, rows: list[Row]) -> pa.Table:
    """The rows as an Arrow table of the kind's schema."""
    schema = SCHEMAS[kind]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
        schema=schema,
    )

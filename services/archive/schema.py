"""The archive's tables: one Arrow schema per kind and the row each message becomes.

Every kind ends with the same bookkeeping columns: where the record came from
(``topic``, ``partition``, ``offset``), when it was written to the stream
(``record_ms``, the Kafka timestamp, which also picks its hour partition) and when the
archive consumed it (``archived_ms``). JSON values of any shape (a request's payload,
a model's output) are kept as compact JSON text; string maps and lists are native.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from services.common.kafka import Record
from services.common.messages import REPLAY, Decision, Feedback, RequestEnvelope, Score

REQUESTS, SCORES, DECISIONS, FEEDBACK = "requests", "scores", "decisions", "feedback"
KINDS = (REQUESTS, SCORES, DECISIONS, FEEDBACK)

_SOURCE = [
    pa.field("topic", pa.string(), nullable=False),
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    pa.field("record_ms", pa.int64(), nullable=False),
    pa.field("archived_ms", pa.int64(), nullable=False),
]
_STR_MAP = pa.map_(pa.string(), pa.string())

SCHEMAS: dict[str, pa.Schema] = {
    REQUESTS: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("endpoint", pa.string(), nullable=False),
            pa.field("payload", pa.string()),  # JSON text
            pa.field("attributes", _STR_MAP),
            pa.field("created_ms", pa.int64(), nullable=False),
            pa.field("deadline_ms", pa.int64(), nullable=False),
            pa.field("trace_id", pa.string()),
            pa.field("replay", pa.string()),  # attributes["replay"], when set
            pa.field("reply_topic", pa.string()),
            pa.field("reply_partition", pa.int32()),
            pa.field("v", pa.int32(), nullable=False),
            *_SOURCE,
        ]
    ),
    SCORES: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("endpoint", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("model_version", pa.string()),
            pa.field("role", pa.string()),
            pa.field("status", pa.string(), nullable=False),  # ok, error, skipped
            pa.field("output", pa.string()),  # JSON text; null unless ok
            pa.field("error", pa.string()),
            pa.field("received_ms", pa.float64()),
            pa.field("started_ms", pa.float64()),
            pa.field("finished_ms", pa.float64()),
            pa.field("v", pa.int32(), nullable=False),
            *_SOURCE,
        ]
    ),
    DECISIONS: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("endpoint", pa.string(), nullable=False),
            pa.field("chosen_model", pa.string()),  # null: the default answer
            pa.field("reason", pa.string()),
            pa.field("in_time", pa.list_(pa.string())),
            pa.field("late", pa.list_(pa.string())),
            pa.field("latencies_ms", pa.map_(pa.string(), pa.float64())),
            pa.field("elapsed_ms", pa.float64()),
            pa.field("decided_ms", pa.float64()),
            pa.field("propensity", pa.float64()),
            pa.field("policy_version", pa.int64()),
            pa.field("ood_status", pa.string()),  # flagged, clear, unknown; null: no gate
            pa.field("ood_detector", pa.string()),
            pa.field("ood_score", pa.float64()),
            pa.field("streamed", pa.bool_()),  # the answer was streamed (stream: true)
            pa.field("v", pa.int32(), nullable=False),
            *_SOURCE,
        ]
    ),
    FEEDBACK: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("reward", pa.float64(), nullable=False),
            pa.field("label", pa.string()),
            pa.field("received_ms", pa.float64(), nullable=False),
            pa.field("v", pa.int32(), nullable=False),
            *_SOURCE,
        ]
    ),
}

Row = tuple[Any, ...]
"""One row: the values of a kind's schema, in order."""


def json_text(value: object) -> str | None:
    """Compact JSON of a JSON value; None stays None (SQL null)."""
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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
        msg.deadline_ms,
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
        msg.error,
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

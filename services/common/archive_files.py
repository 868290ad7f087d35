"""The archive's files, the contract between the archive (which writes them) and compare
and replay (which read them): the kinds, one Arrow schema per kind, and a DuckDB reader.

Every kind ends with the same bookkeeping columns: where the record came from
(``topic``, ``partition``, ``offset``), when it was written to the stream
(``record_ms``, the Kafka timestamp, which also picks its hour partition) and when the
archive consumed it (``archived_ms``). JSON values of any shape (a request's payload,
a model's output) are kept as compact JSON text; string maps and lists are native.
Files live under ``<root>/<kind>/date=YYYY-MM-DD/hour=HH/*.parquet``.

``connect(root)`` gives a connection whose views are the four tables, each row once::

    from services.common.archive_files import connect

    con = connect(".rdv/archive")
    con.sql("SELECT model, status, count(*) FROM scores GROUP BY ALL").show()
    con.sql('''
        SELECT r.endpoint, s.model, median(s.finished_ms - r.created_ms) AS ms
        FROM requests r JOIN scores s USING (request_id) GROUP BY ALL
    ''').show()

Views (columns: ``SCHEMAS``, plus ``date`` (DATE) and ``hour`` (INTEGER) from the
partition directories; filter on them to read fewer files):

- ``requests``, ``scores``, ``decisions``, ``feedback``: deduplicated by (request id,
  model) (model only for scores; feedback by request id and the time it was given),
  keeping the copy written to the stream first. The archive writes at least once, so
  after a crash some rows are on disk twice; these views never show them twice.
- ``<kind>_raw`` for each: every row on disk, duplicates included (cheaper: no window
  over the whole table).

The file list is read at query time, so new files are seen by later queries; a kind
that had no file at all when ``connect`` ran stays empty until the next ``connect``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

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
            pa.field("deadline_ms", pa.int64(), nullable=False),  # absolute, the wire name
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
            pa.field("error", pa.string()),  # "[code] message"; null unless it failed
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
            pa.field("arm", pa.string()),  # a bandit stage's draw; null without one
            pa.field("bucket", pa.string()),  # ... its context bucket
            pa.field("learned_version", pa.int64()),  # ... the learned rewards it used
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

_PARTITION_COLUMNS = [pa.field("date", pa.date32()), pa.field("hour", pa.int32())]


def dedup_columns(kind: str) -> list[str]:
    """The columns that identify one row of ``kind``."""
    if kind == FEEDBACK:
        return ["request_id", "received_ms"]
    return ["request_id", "model"] if kind == SCORES else ["request_id"]


def files_glob(root: Path | str, kind: str) -> str:
    return str(Path(root) / kind / "date=*" / "hour=*" / "*.parquet")


def connect(root: Path | str, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views above over the archive under ``root``."""
    con = duckdb.connect(database)
    for kind in KINDS:
        pattern = files_glob(root, kind)
        if any(Path(root).glob(str(Path(kind, "date=*", "hour=*", "*.parquet")))):
            source = (
                f"read_parquet({_literal(pattern)}, hive_partitioning = true, "
                "hive_types = {'date': DATE, 'hour': INTEGER}, union_by_name = true)"
            )
        else:
            empty = pa.schema([*SCHEMAS[kind], *_PARTITION_COLUMNS]).empty_table()
            con.register(f"_{kind}_empty", empty)
            source = f"_{kind}_empty"
        # names are constants and the path a quoted literal: views take no parameters
        con.execute(f"CREATE VIEW {kind}_raw AS SELECT * FROM {source}")  # noqa: S608
        keys = ", ".join(dedup_columns(kind))
        order = 'record_ms, "offset", archived_ms'
        view = f"CREATE VIEW {kind} AS SELECT * FROM {kind}_raw QUALIFY "  # noqa: S608
        con.execute(view + f"row_number() OVER (PARTITION BY {keys} ORDER BY {order}) = 1")
    return con


def _literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"

"""Read the archive with DuckDB: ``connect(root)`` gives a connection whose views are
the archive's four tables, each row once.

    from services.archive.query import connect

    con = connect(".rdv/archive")
    con.sql("SELECT model, status, count(*) FROM scores GROUP BY ALL").show()
    con.sql('''
        SELECT r.endpoint, s.model, median(s.finished_ms - r.created_ms) AS ms
        FROM requests r JOIN scores s USING (request_id) GROUP BY ALL
    ''').show()

Views (columns: services.archive.schema, plus ``date`` (DATE) and ``hour`` (INTEGER)
from the partition directories; filter on them to read fewer files):

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

from services.archive.schema import FEEDBACK, KINDS, SCHEMAS, SCORES

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

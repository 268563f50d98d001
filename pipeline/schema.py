"""The two tables users query: `segments` (one row per segment) and `files` (one per unit).

A unit is a whole file, or one window of a long file that the planner split
(`start_s`, `end_s`); segment times are always seconds from the start of the file.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

WORD_TYPE = pa.struct(
    [
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("word", pa.string()),
        ("probability", pa.float32()),
    ]
)

SEGMENTS_SCHEMA = pa.schema(
    [
        ("unit_id", pa.string()),
        ("uri", pa.string()),
        ("shard", pa.int32()),
        ("segment", pa.int32()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("text", pa.string()),
        ("avg_logprob", pa.float32()),
        ("no_speech_prob", pa.float32()),
        ("compression_ratio", pa.float32()),
        ("temperature", pa.float32()),
        ("language", pa.string()),
        ("words", pa.list_(WORD_TYPE)),
    ]
)

FILES_SCHEMA = pa.schema(
    [
        ("unit_id", pa.string()),
        ("uri", pa.string()),
        ("shard", pa.int32()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("decode_warning", pa.string()),
        # Reasons to doubt an `ok` transcript (see pipeline.quality): repetition,
        # low_confidence, language_mismatch; empty when there is none.
        ("flags", pa.list_(pa.string())),
        ("attempts", pa.int32()),
        ("size_bytes", pa.int64()),
        # The window of the file this unit covers: 0 and null for a whole file.
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("duration_s", pa.float64()),
        ("language", pa.string()),
        ("language_probability", pa.float32()),
        ("segments", pa.int32()),
        ("decode_s", pa.float64()),
        ("transcribe_s", pa.float64()),
        ("rtfx", pa.float64()),
        ("node", pa.string()),
        ("model", pa.string()),
        ("compute_type", pa.string()),
        ("cpu_threads", pa.int32()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)

STATUSES = ("ok", "no_speech", "failed")

# Repetitive strings that Parquet should dictionary-encode; free text is left plain.
DICTIONARY_COLUMNS = ["unit_id", "uri", "language", "status", "error_type", "node", "model", "compute_type"]


def segments_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SEGMENTS_SCHEMA)


def files_table(rows: list[dict[str, Any]], extra: pa.Table | None = None) -> pa.Table:
    """The `files` rows, followed by the manifest columns of `extra` (same row order)."""
    table = pa.Table.from_pylist(rows, schema=FILES_SCHEMA)
    if extra is not None:
        for name in extra.column_names:
            table = table.append_column(extra.schema.field(name), extra.column(name))
    return table

"""Every column of the tables bulkscribe writes, in one place: `segments` and `files` (the
tables users query) and the plan (`_plan/`).

Each table is a dataclass whose fields carry their Arrow type; the Arrow schemas, the
reserved column names and the rows the actors build all derive from these classes, so a
new column is added here and nowhere else.

A unit is a whole file, or one window of a long file that the planner split
(`start_s`, `end_s`), mixed down to mono or, with `--channels split`, one channel of it
(`channel`); segment times are always seconds from the start of the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Sequence

import pyarrow as pa


def _column(arrow_type: pa.DataType, default: Any = None, *, factory=None):
    if factory is not None:
        return field(default_factory=factory, metadata={"arrow": arrow_type})
    return field(default=default, metadata={"arrow": arrow_type})


def arrow_schema(row_type: type) -> pa.Schema:
    return pa.schema([(f.name, f.metadata["arrow"]) for f in dataclasses.fields(row_type)])


def column_names(row_type: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(row_type))


WORD_TYPE = pa.struct(
    [
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("word", pa.string()),
        ("probability", pa.float32()),
    ]
)


@dataclass
class SegmentRow:
    """One row of `segments`: one segment of one unit's transcript."""

    unit_id: str = _column(pa.string())
    uri: str = _column(pa.string())
    shard: int = _column(pa.int32())
    # Counts from 0 within the unit.
    segment: int = _column(pa.int32())
    # Seconds from the start of the file, to the millisecond.
    start: float = _column(pa.float64())
    end: float = _column(pa.float64())
    text: str = _column(pa.string())
    avg_logprob: float = _column(pa.float32())
    no_speech_prob: float = _column(pa.float32())
    compression_ratio: float = _column(pa.float32())
    temperature: float = _column(pa.float32())
    language: str | None = _column(pa.string())
    # {start, end, word, probability} per word, with --word-timestamps; else null.
    words: list[dict[str, Any]] | None = _column(pa.list_(WORD_TYPE))
    # The channel (0 for the first) whose speech this is, with --channels split; null
    # for a mixdown (and in folders written before the column existed).
    channel: int | None = _column(pa.int16())


@dataclass
class FileRow:
    """One row of `files`: what became of one unit."""

    unit_id: str = _column(pa.string())
    uri: str = _column(pa.string())
    shard: int = _column(pa.int32())
    # ok, no_speech or failed (STATUSES).
    status: str = _column(pa.string(), "failed")
    error_type: str | None = _column(pa.string())
    error_message: str | None = _column(pa.string())
    decode_warning: str | None = _column(pa.string())
    # Reasons to doubt an `ok` transcript (see pipeline.quality): repetition,
    # low_confidence, language_mismatch; empty when there is none.
    flags: list[str] = _column(pa.list_(pa.string()), factory=list)
    attempts: int = _column(pa.int32())
    size_bytes: int | None = _column(pa.int64())
    # The window of the file this unit covers: 0 and null for a whole file.
    start_s: float = _column(pa.float64(), 0.0)
    end_s: float | None = _column(pa.float64())
    duration_s: float | None = _column(pa.float64())
    language: str | None = _column(pa.string())
    language_probability: float | None = _column(pa.float32())
    segments: int = _column(pa.int32(), 0)
    decode_s: float | None = _column(pa.float64())
    # Wall seconds from the unit's first window to its last, shared with the units its
    # actor transcribed at the same time (pipeline.streams).
    transcribe_s: float | None = _column(pa.float64())
    rtfx: float | None = _column(pa.float64())
    node: str | None = _column(pa.string())
    model: str | None = _column(pa.string())
    compute_type: str | None = _column(pa.string())
    cpu_threads: int | None = _column(pa.int32())
    finished_at: datetime | None = _column(pa.timestamp("ms", tz="UTC"))
    # The channel this unit is (0 for the first), with --channels split: a file of N
    # channels has N rows, keyed (uri, start_s, channel); null for a mixdown.
    channel: int | None = _column(pa.int16())
    # 0 when this channel carries the same signal as channel 0 (dual mono): it is `ok`
    # and not transcribed again (no segments of its own); else null.
    same_as_channel: int | None = _column(pa.int16())


@dataclass(frozen=True)
class PlanRow:
    """One row of the plan: a unit and the shard it belongs to. Manifest columns follow
    these in the plan's Parquet parts and are copied to the unit's `files` row."""

    shard: int = _column(pa.int32())
    unit_id: str = _column(pa.string())
    uri: str = _column(pa.string())
    size_bytes: int | None = _column(pa.int64())
    # Audio seconds guessed from the size (pipeline.plan), to balance shards.
    est_audio_s: float = _column(pa.float64())
    start_s: float | None = _column(pa.float64())
    end_s: float | None = _column(pa.float64())
    # The file's duration as a manifest gives it, or as its header says for a file whose
    # size says it may be long (pipeline.windows): estimates take it instead of the size's
    # guess, and window planning instead of measuring the file (null: neither).
    duration_s: float | None = _column(pa.float64())
    # A window of a long file (pipeline.windows): its seams are moved to silence.
    split: bool = _column(pa.bool_(), False)
    # One channel of the file (pipeline.channels, --channels split); null: mixed to mono.
    channel: int | None = _column(pa.int16())


SEGMENTS_SCHEMA = arrow_schema(SegmentRow)
FILES_SCHEMA = arrow_schema(FileRow)
PLAN_SCHEMA = arrow_schema(PlanRow)
# The columns the inputs give the planner (pipeline.inputs), before shards are numbered.
UNIT_SCHEMA = pa.schema([PLAN_SCHEMA.field(n) for n in ("unit_id", "uri", "size_bytes", "start_s", "end_s",
                                                         "duration_s")])
# Names a manifest column may not take (it is renamed `manifest_<name>`).
RESERVED_COLUMNS = frozenset(FILES_SCHEMA.names) | frozenset(PLAN_SCHEMA.names)

STATUSES = ("ok", "no_speech", "failed")

# Repetitive strings that Parquet should dictionary-encode; free text is left plain.
DICTIONARY_COLUMNS = ["unit_id", "uri", "language", "status", "error_type", "node", "model", "compute_type"]


def plan_rows(units: pa.Table) -> list[PlanRow]:
    """The plan's own columns of `units` as rows (manifest columns left out)."""
    names = [n for n in PLAN_SCHEMA.names if n in units.column_names]
    return [PlanRow(**r) for r in units.select(names).to_pylist()]


def manifest_columns(units: pa.Table) -> pa.Table | None:
    """The columns of plan rows `units` that came from a manifest, or None."""
    extra = units.drop_columns([c for c in units.column_names if c in PLAN_SCHEMA.names])
    return extra if extra.num_columns else None


def files_schema(plan: pa.Schema) -> pa.Schema:
    """The schema of the `files` table of a folder whose plan parts unify to `plan`: every
    `files` column, then the plan's manifest columns (null in the parts of shards written
    before the plan append that brought them)."""
    return pa.schema(list(FILES_SCHEMA) + [f for f in plan if f.name not in PLAN_SCHEMA.names])


def segments_table(rows: Iterable[SegmentRow]) -> pa.Table:
    return pa.Table.from_pylist([vars(r) for r in rows], schema=SEGMENTS_SCHEMA)


def files_table(rows: Sequence[FileRow], extra: pa.Table | None = None) -> pa.Table:
    """The `files` rows, followed by the manifest columns of `extra` (same row order)."""
    table = pa.Table.from_pylist([vars(r) for r in rows], schema=FILES_SCHEMA)
    if extra is not None:
        for name in extra.column_names:
            table = table.append_column(extra.schema.field(name), extra.column(name))
    return table

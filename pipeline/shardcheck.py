"""The checks of one shard's rows: what the writer runs on the bytes it is about to
commit (`pipeline.commit`) and what `verify` runs on the parts it reads back. Segments
against units, row counts against the marker, a files part against the plan."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa

from pipeline.parquet import read_parquet_bytes
from pipeline.schema import FILES_SCHEMA, SEGMENTS_SCHEMA
from pipeline.store import TABLES

# The columns the checks of segments against units need; the text is not kept.
KEYS = {"files": ["unit_id", "segments"], "segments": ["unit_id", "segment"]}
# Their types, for a table of no parts.
_KEY_FIELDS = {f.name: f for f in (*FILES_SCHEMA, *SEGMENTS_SCHEMA)}


def shard_problems(shard: int, parts: dict[str, tuple[bytes, int]], unit_ids: list[str]) -> list[str]:
    """What `verify` would find wrong in the rows of one shard's Parquet `parts` ({table:
    (bytes, rows the marker will record)}) whose plan gives it `unit_ids`: unreadable
    parts, other row counts, segments against units (`segment_problems`), a files part
    listing other units. The writer runs it on the bytes it is about to write
    (`Part.checked`)."""
    problems, parsed = [], {}
    for table, (data, rows) in parts.items():
        if (part := part_keys(shard, table, data, rows, problems)) is not None:
            parsed[table] = part
    if len(parsed) < len(TABLES):
        return problems
    keys = keyed({shard: parsed})
    problems += segment_problems(keys["files"], keys["segments"])
    if sorted(keys["files"].column("unit_id").to_pylist()) != sorted(unit_ids):
        problems.append(f"shard {shard}: the files part lists other units than the plan gives the shard")
    return problems


def segment_problems(files: pa.Table, segments: pa.Table) -> list[str]:
    """Segments against the units of their own shard: no segment twice, each unit's
    count as `files` says, no segment of a unit its shard's `files` part does not list.
    With every unit in one shard's `files` (checked across all shards), that makes the
    segments right across all shards too. In plain Python: a block's tens of thousands
    of rows take milliseconds, and Arrow's group_by would import pandas into every actor
    that writes a shard (0.4 s)."""
    problems = []
    for (uid, seg), n in Counter(zip(*columns_of(segments, "unit_id", "segment"))).items():
        if n > 1:
            problems.append(f"segment {seg} of unit {uid} appears {n} times")
    per_unit = Counter(zip(*columns_of(segments, "shard", "unit_id")))
    listed = dict(zip(zip(*columns_of(files, "shard", "unit_id")), files.column("segments").to_pylist()))
    for shard, uid in sorted(per_unit.keys() - listed.keys()):
        problems.append(f"shard {shard}: segments of unit {uid}, which its files part does not list")
    for (shard, uid), count in listed.items():
        if (count or 0) != per_unit[shard, uid]:
            problems.append(f"unit {uid}: files says {count} segments, segments has {per_unit[shard, uid]}")
    return problems


def part_keys(shard: int, table: str, data: bytes, rows: int, problems: list[str]) -> pa.Table | None:
    """The key columns (`KEYS`) of one part's Parquet `data`, whose marker records `rows`
    rows; None if it cannot be read (torn or overwritten). What is wrong goes to `problems`."""
    try:
        part = read_parquet_bytes(data, columns=KEYS[table])
    except (pa.ArrowException, OSError) as exc:
        problems.append(f"shard {shard}: {table} part cannot be read as Parquet ({exc})")
        return None
    if part.num_rows != rows:
        problems.append(f"shard {shard}: {table} part has {part.num_rows} rows, marker says {rows}")
    return part


def keyed(parsed: dict[int, dict[str, pa.Table]]) -> dict[str, pa.Table]:
    """Per table, the key columns of the parts of several shards in one table, with their `shard`."""
    keys = {}
    for table in TABLES:
        tables = [(shard, k[table]) for shard, k in parsed.items() if table in k]
        keyed = concat_keys([t for _, t in tables], KEYS[table]).combine_chunks()
        counts = [t.num_rows for _, t in tables]
        keys[table] = keyed.append_column("shard", pa.array(np.repeat([s for s, _ in tables], counts), pa.int32()))
    return keys


def concat_keys(tables: list[pa.Table], columns: list[str]) -> pa.Table:
    if not tables:
        return pa.schema([_KEY_FIELDS[c] for c in columns]).empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def columns_of(table: pa.Table, *names: str) -> list[list]:
    return [table.column(name).to_pylist() for name in names]

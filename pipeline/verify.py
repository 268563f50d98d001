"""Check an output folder against its contract: every planned unit exactly once, no
duplicate segment, every marker's sha256 matching its parts.

`bulkscribe verify OUT` runs it; the fault tests run it after every scenario.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.records import CommitMarker
from pipeline.schema import FILES_SCHEMA, SEGMENTS_SCHEMA
from pipeline.store import PARALLEL_REQUESTS, TABLES, OutputStore, read_parquet_bytes

# The columns the checks of segments against units need; the text is not kept.
_KEYS = {"files": ["unit_id", "segments"], "segments": ["unit_id", "segment"]}
# Their types, for a table of no parts.
_KEY_FIELDS = {f.name: f for f in (*FILES_SCHEMA, *SEGMENTS_SCHEMA)}
# Shards are checked in blocks of this many, each block's key columns joined into one
# table (10^5 small tables cost far more than their rows: 2.3 GB in all).
BLOCK_SHARDS = 1000
# A local folder of more blocks than this is checked by a process per CPU: reading and
# checking a shard is about 1.5 ms of Python, which threads cannot share out.
PROCESSES_FROM_BLOCKS = 2


@dataclass
class Verification:
    units_planned: int = 0
    units_found: int = 0
    segments: int = 0
    shards_planned: int = 0
    shards_committed: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        head = (
            f"{'OK' if self.ok else 'PROBLEMS'}: {self.shards_committed}/{self.shards_planned} shards committed, "
            f"{self.units_found}/{self.units_planned} units, {self.segments} segments"
        )
        return "\n".join([head, *(f"problem: {p}" for p in self.problems), *(f"note: {n}" for n in self.notes)])


def verify(store: OutputStore, *, require_complete: bool = True) -> Verification:
    """Read every committed part and marker of `store` and list what breaks the contract.

    Shards are read in blocks (`_checked_blocks`): by a process per CPU in a large local
    folder, by `store.PARALLEL_REQUESTS` requests at once in an object store. A block's
    segments are checked against its units there (`_segment_problems`); only the unit
    ids of its `files` parts come back, for the check across all shards, so memory grows
    with the number of units, not with the segments or their text.

    Args:
        require_complete: report planned shards without a marker as problems (else notes).
    """
    v = Verification()
    plan = store.read_plan()
    if plan is None:
        v.problems.append("no plan (_plan/ is empty): not a bulkscribe output folder, or planning never finished")
        return v
    planned_shards = set(pc.unique(plan.column("shard")).to_pylist())
    committed = store.committed()
    indexed = store.index_entries()
    shards = sorted(committed & planned_shards)
    blocks = [shards[i:i + BLOCK_SHARDS] for i in range(0, len(shards), BLOCK_SHARDS)]
    unit_ids: list[pa.ChunkedArray] = []
    with ExitStack() as stack:
        # Processes (for a large local folder) start on the blocks now; the checks of
        # the plan and the listings run here meanwhile.
        checked = _checked_blocks(store, blocks, indexed, stack)
        v.units_planned, v.shards_planned = plan.num_rows, len(planned_shards)
        planned = _counted(plan.select(["unit_id"]), ["unit_id"])
        for uid, n in zip(*_columns(planned.filter(pc.greater(planned["n"], 1)), "unit_id", "n")):
            v.problems.append(f"unit {uid} is planned {n} times")
        v.shards_committed = len(shards)
        for shard in sorted(committed - planned_shards):
            v.problems.append(f"marker for shard {shard}, which is not in the plan")
        for shard in sorted(planned_shards - committed):
            (v.problems if require_complete else v.notes).append(f"shard {shard} is not committed")
        for shard in sorted(indexed.keys() - committed):  # a marker deleted by hand, to run the shard again
            v.notes.append(f"shard {shard}: the marker index (_index/markers.parquet) holds it, but its marker "
                           "is gone, so status counts it as committed until a run writes the index again")
        for table in TABLES:
            for shard in sorted(store.shards_in(table, "part-*.parquet") - committed):
                v.notes.append(f"{table} part of uncommitted shard {shard} (left by an interrupted attempt; "
                               "a rerun replaces it)")
        committed_units = pc.unique(
            plan.filter(pc.is_in(plan.column("shard"), pa.array(sorted(committed), pa.int32()))).column("unit_id"))
        for block in checked:
            v.problems += block.problems
            v.segments += block.segments
            unit_ids.append(block.unit_ids)

    # Every committed unit exactly once in `files`, across all shards: on Arrow tables
    # (10^6 unit ids as Python strings in a Counter took over a GB).
    files = _concat([pa.table({"unit_id": ids}) for ids in unit_ids], ["unit_id"])
    found = _counted(files, ["unit_id"])
    v.units_found = files.num_rows
    expected = pa.table({"unit_id": committed_units}).join(found, "unit_id", join_type="left outer")
    for uid, n in zip(*_columns(expected.filter(pc.not_equal(pc.fill_null(expected["n"], 0), 1)), "unit_id", "n")):
        v.problems.append(f"unit {uid} appears {n or 0} times in files")
    for (uid,) in zip(*_columns(found.filter(pc.invert(pc.is_in(found["unit_id"], committed_units))), "unit_id")):
        v.problems.append(f"unit {uid} is in files but not planned in a committed shard")
    return v


@dataclass
class _Block:
    """What the check of a block of shards hands back: its problems, the unit ids of its
    `files` parts (for the check across all shards) and its number of segments."""

    problems: list[str]
    unit_ids: pa.ChunkedArray
    segments: int


def _concat(tables: list[pa.Table], columns: list[str]) -> pa.Table:
    if not tables:
        return pa.schema([_KEY_FIELDS[c] for c in columns]).empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def _counted(table: pa.Table, keys: list[str]) -> pa.Table:
    """The distinct `keys` of `table`, with their number of rows as `n`."""
    return table.group_by(keys).aggregate([([], "count_all")]).rename_columns({"count_all": "n"})


def _columns(table: pa.Table, *names: str) -> list[list]:
    return [table.column(name).to_pylist() for name in names]


def _checked_blocks(store: OutputStore, blocks: list[list[int]], indexed: dict[int, str],
                    stack: ExitStack) -> Iterator[_Block]:
    """`_check_block` of each block, in order. A large local folder's blocks go to a
    process per CPU at once; otherwise each is checked here as it is asked for (an object
    store's shards by `PARALLEL_REQUESTS` threads, which wait on its answers for each
    other; on a local disk threads only fight over the GIL: 10^3 shards took 2.9 s with
    16 threads, 1.2 s with one). The pools end with `stack`."""
    work = [(store, block, {s: indexed[s] for s in block if s in indexed}) for block in blocks]
    processes = min(len(os.sched_getaffinity(0)), len(blocks))
    if store.local and len(blocks) > PROCESSES_FROM_BLOCKS and processes > 1:
        # spawn: the caller may hold threads (Arrow's, Ray's) that a fork would copy mid-flight.
        pool = stack.enter_context(ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")))
        return pool.map(_check_block, *zip(*work))  # every block is submitted here
    threads = stack.enter_context(ThreadPoolExecutor(1 if store.local else PARALLEL_REQUESTS))
    return (_check_block(*args, pool=threads) for args in work)


def _check_block(store: OutputStore, shards: list[int], indexed: dict[int, str],
                 pool: ThreadPoolExecutor | None = None) -> _Block:
    """The problems of `shards`, each on its own (`_check_shard`) and of their segments
    against their units (`_segment_problems`)."""
    checked = list((pool.map if pool else map)(lambda shard: _check_shard(store, shard, indexed.get(shard)), shards))
    problems = [p for shard_problems, _ in checked for p in shard_problems]
    keys = {}
    for table in TABLES:
        tables = [(shard, k[table]) for shard, (_, k) in zip(shards, checked) if table in k]
        keyed = _concat([t for _, t in tables], _KEYS[table])
        counts = [t.num_rows for _, t in tables]
        keys[table] = keyed.append_column("shard", pa.array(np.repeat([s for s, _ in tables], counts), pa.int32()))
    problems += _segment_problems(keys["files"], keys["segments"])
    return _Block(problems, keys["files"].column("unit_id"), keys["segments"].num_rows)


def _segment_problems(files: pa.Table, segments: pa.Table) -> list[str]:
    """Segments against the units of their own shard: no segment twice, each unit's
    count as `files` says, no segment of a unit its shard's `files` part does not list.
    With every unit in one shard's `files` (checked across all shards), that makes the
    segments right across all shards too."""
    problems = []
    twice = _counted(segments, ["unit_id", "segment"])
    for uid, seg, n in zip(*_columns(twice.filter(pc.greater(twice["n"], 1)), "unit_id", "segment", "n")):
        problems.append(f"segment {seg} of unit {uid} appears {n} times")
    listed = files.append_column("listed", pa.array(np.ones(files.num_rows, bool)))
    per_unit = listed.join(_counted(segments, ["shard", "unit_id"]), ["shard", "unit_id"], join_type="full outer")
    unlisted = pc.is_null(per_unit["listed"])
    for shard, uid in zip(*_columns(per_unit.filter(unlisted), "shard", "unit_id")):
        problems.append(f"shard {shard}: segments of unit {uid}, which its files part does not list")
    differ = pc.and_(pc.invert(unlisted),
                     pc.not_equal(pc.fill_null(per_unit["segments"], 0), pc.fill_null(per_unit["n"], 0)))
    for uid, count, n in zip(*_columns(per_unit.filter(differ), "unit_id", "segments", "n")):
        problems.append(f"unit {uid}: files says {count} segments, segments has {n or 0}")
    return problems


def _check_shard(store: OutputStore, shard: int, indexed: str | None) -> tuple[list[str], dict[str, pa.Table]]:
    """The problems of one committed shard's marker and parts, and the key columns of its
    parts (`_KEYS`) for its block's check of segments against units."""
    problems, keys = [], {}
    written = store.read_json(store.marker_path(shard))
    marker = None if written is None else CommitMarker.from_json(written)
    # The same JSON is the same marker; other JSON may still be (written by an older
    # bulkscribe, without fields the index's has), so that is compared as markers.
    if indexed is not None and (index_json := json.loads(indexed)) != written and \
            CommitMarker.from_json(index_json) != marker:
        problems.append(f"shard {shard}: the marker index (_index/markers.parquet) holds another marker "
                        "than _commits/, so status would misreport it")
    for table in TABLES:
        try:
            data = store.read_bytes(store.part_path(table, shard))
        except FileNotFoundError:
            problems.append(f"shard {shard}: marker exists but {table} part is missing")
            continue
        expected = marker.parts.get(table) if marker is not None else None
        if expected is None:
            problems.append(f"shard {shard}: its marker does not record the {table} part")
            continue
        if hashlib.sha256(data).hexdigest() != expected.sha256:
            problems.append(f"shard {shard}: sha256 of the {table} part does not match its marker")
        try:
            part = read_parquet_bytes(data, columns=_KEYS[table])
        except (pa.ArrowException, OSError) as exc:  # torn or overwritten: no rows to count
            problems.append(f"shard {shard}: {table} part cannot be read as Parquet ({exc})")
            continue
        if part.num_rows != expected.rows:
            problems.append(f"shard {shard}: {table} part has {part.num_rows} rows, marker says {expected.rows}")
        keys[table] = part
    return problems, keys

"""Check an output folder against its contract: every planned unit exactly once, no
duplicate segment, every marker's sha256 matching its parts, and the compacted copies
that the query views read holding as many rows of each shard as its parts.

`bulkscribe verify OUT` runs it; the fault tests run it after every scenario. The checks
of one shard's rows (`shardcheck.shard_problems`) also run in the writer, on the bytes it is about
to write (`commit.stage_parts`): a part whose marker says so (`Part.checked`) and whose
sha256 still matches is then not parsed again unless asked (`reparse`), since the same
bytes give the same rows. Every part is still read and hashed, except on an object
store whose listings give ETags: there a marker whose ETag is the MD5 of the index's
marker, and parts whose ETags are the MD5s it records (`Part.md5`), are those bytes
without a read, so a finished folder of 10^5 shards is verified with about 300
listing requests instead of 3 x 10^5 reads.
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

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import compact
from pipeline.index import index_entries
from pipeline.ledger import read_job, read_plan
from pipeline.markers import committed_shards
from pipeline.publish import unpublished
from pipeline.records import CommitMarker
from pipeline.shardcheck import columns_of, concat_keys, keyed, part_keys, segment_problems
from pipeline.store import PARALLEL_REQUESTS, TABLES, OutputStore, json_bytes, shard_numbers

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
    # Committed shards whose parts' rows were read here (the others' were checked by their writer).
    shards_reparsed: int = 0
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


def verify(store: OutputStore, *, require_complete: bool = True, reparse: bool = False) -> Verification:
    """Read every committed part and marker of `store` and list what breaks the contract.
    On an object store that lists ETags, markers and parts whose ETag shows they are the
    bytes the index and the markers record are not read (`_listed`; `reparse` reads all).

    Shards are read in blocks (`_checked_blocks`): by a process per CPU in a large local
    folder, by `store.PARALLEL_REQUESTS` requests at once in an object store. A block's
    segments are checked against its units there (`segment_problems`); only the unit
    ids of its `files` parts come back, for the check across all shards, so memory grows
    with the number of units, not with the segments or their text.

    Args:
        require_complete: report planned shards without a marker as problems (else notes).
        reparse: read the rows of every part, also of those their writer checked.
    """
    v = Verification()
    plan = read_plan(store)
    if plan is None:
        v.problems.append("no plan (_plan/ is empty): not a bulkscribe output folder, or planning never finished")
        return v
    planned_shards = set(pc.unique(plan.column("shard")).to_pylist())
    etags = _listed_etags(store, reparse)
    # The listings of the ETags are those of the markers and parts too.
    committed = committed_shards(store) if etags is None else _listed_shards(store, etags, "_commits")
    indexed = index_entries(store)
    shards = sorted(committed & planned_shards)
    blocks = [shards[i:i + BLOCK_SHARDS] for i in range(0, len(shards), BLOCK_SHARDS)]
    unit_ids: list[pa.ChunkedArray] = []
    with ExitStack() as stack:
        # Processes (for a large local folder) start on the blocks now; the checks of
        # the plan and the listings run here meanwhile.
        checked = _checked_blocks(store, blocks, indexed, reparse, stack, etags)
        v.units_planned, v.shards_planned = plan.num_rows, len(planned_shards)
        planned = _counted(plan.select(["unit_id"]), ["unit_id"])
        for uid, n in zip(*columns_of(planned.filter(pc.greater(planned["n"], 1)), "unit_id", "n")):
            v.problems.append(f"unit {uid} is planned {n} times")
        v.shards_committed = len(shards)
        for shard in sorted(committed - planned_shards):
            v.problems.append(f"marker for shard {shard}, which is not in the plan")
        for shard in sorted(planned_shards - committed):
            (v.problems if require_complete else v.notes).append(f"shard {shard} is not committed")
        for shard in sorted(unpublished(store, committed)):
            v.problems.append(f"shard {shard} is committed but its parts are still staged (_staged/): a commit cut "
                              "short between its marker and its parts; the next `bulkscribe run` publishes them")
        for shard in sorted(indexed.keys() - committed):  # a marker deleted by hand, to run the shard again
            v.notes.append(f"shard {shard}: the marker index (_index/markers.parquet) holds it, but its marker "
                           "is gone, so status counts it as committed until a run writes the index again")
        for table in TABLES:
            parts = store.shards_in(table, "part-*.parquet") if etags is None else _listed_shards(store, etags, table)
            for shard in sorted(parts - committed):
                v.notes.append(f"{table} part of uncommitted shard {shard} (left by an interrupted attempt; "
                               "a rerun replaces it)")
        committed_units = pc.unique(
            plan.filter(pc.is_in(plan.column("shard"), pa.array(sorted(committed), pa.int32()))).column("unit_id"))
        trusted = []
        routes_to = None  # read from job.json only if a marker names a routed model
        for block in checked:
            for shard, models in sorted(block.routed.items()):
                routes_to = _routes_to(store) if routes_to is None else routes_to
                for model in sorted(models - routes_to):
                    v.problems.append(f"shard {shard}: files transcribed by model {model}, which this job does not "
                                      "route files in other languages to")
            v.problems += block.problems
            v.segments += block.segments
            unit_ids.append(block.unit_ids)
            trusted += block.trusted
        v.shards_reparsed = len(shards) - len(trusted)
        # A checked files part lists exactly the units the plan gives its shard.
        unit_ids.append(plan.filter(pc.is_in(plan.column("shard"), pa.array(trusted, pa.int32()))).column("unit_id"))

    # Every committed unit exactly once in `files`, across all shards: on Arrow tables
    # (10^6 unit ids as Python strings in a Counter took over a GB).
    files = concat_keys([pa.table({"unit_id": ids}) for ids in unit_ids], ["unit_id"])
    found = _counted(files, ["unit_id"])
    v.units_found = files.num_rows
    expected = pa.table({"unit_id": committed_units}).join(found, "unit_id", join_type="left outer")
    for uid, n in zip(*columns_of(expected.filter(pc.not_equal(pc.fill_null(expected["n"], 0), 1)), "unit_id", "n")):
        v.problems.append(f"unit {uid} appears {n or 0} times in files")
    for (uid,) in zip(*columns_of(found.filter(pc.invert(pc.is_in(found["unit_id"], committed_units))), "unit_id")):
        v.problems.append(f"unit {uid} is in files but not planned in a committed shard")
    v.problems += compact.problems(store, committed, indexed)
    return v


def _listed_etags(store: OutputStore, reparse: bool) -> dict[str, str] | None:
    """The ETags of the markers and parts of an object store (a listing of each folder:
    a request per 1,000 keys), so that unchanged ones need not be read; None locally,
    with `reparse`, or where the store lists no ETags."""
    if store.local or reparse:
        return None
    tags: dict[str, str] = {}
    for folder in ("_commits", *TABLES):
        listed = store.etags(folder)
        if listed is None:
            return None
        tags.update(listed)
    return tags


def _listed_shards(store: OutputStore, etags: dict[str, str], folder: str) -> set[int]:
    """The shard numbers of the objects in `folder` that the ETag listings hold."""
    prefix = store.path(folder) + "/"
    return shard_numbers(p[len(prefix):] for p in etags if p.startswith(prefix) and "/" not in p[len(prefix):])


@dataclass
class _Block:
    """What the check of a block of shards hands back: its problems, the unit ids of the
    `files` parts it parsed (for the check across all shards), its number of segments and
    the shards whose parts it did not parse (checked by their writer, bytes unchanged)."""

    problems: list[str]
    unit_ids: pa.ChunkedArray
    segments: int
    trusted: list[int]
    # shard -> the models other than the job's that transcribed its `ok` units (routed)
    routed: dict[int, set[str]] = field(default_factory=dict)


def _counted(table: pa.Table, keys: list[str]) -> pa.Table:
    """The distinct `keys` of `table`, with their number of rows as `n`."""
    return table.group_by(keys).aggregate([([], "count_all")]).rename_columns({"count_all": "n"})


def _checked_blocks(store: OutputStore, blocks: list[list[int]], indexed: dict[int, str], reparse: bool,
                    stack: ExitStack, etags: dict[str, str] | None = None) -> Iterator[_Block]:
    """`_check_block` of each block, in order. A large local folder's blocks go to a
    process per CPU at once; otherwise each is checked here as it is asked for (an object
    store's shards by `PARALLEL_REQUESTS` threads, which wait on its answers for each
    other; on a local disk threads only fight over the GIL: 10^3 shards took 2.9 s with
    16 threads, 1.2 s with one). The pools end with `stack`."""
    work = [(store, block, {s: indexed[s] for s in block if s in indexed}, reparse) for block in blocks]
    processes = min(len(os.sched_getaffinity(0)), len(blocks))
    if store.local and len(blocks) > PROCESSES_FROM_BLOCKS and processes > 1:
        # spawn: the caller may hold threads (Arrow's, Ray's) that a fork would copy mid-flight.
        pool = stack.enter_context(ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")))
        return pool.map(_check_block, *zip(*work))  # every block is submitted here
    threads = stack.enter_context(ThreadPoolExecutor(1 if store.local else PARALLEL_REQUESTS))
    return (_check_block(*args, pool=threads, etags=etags) for args in work)


def _check_block(store: OutputStore, shards: list[int], indexed: dict[int, str], reparse: bool,
                 pool: ThreadPoolExecutor | None = None, etags: dict[str, str] | None = None) -> _Block:
    """The problems of `shards`, each on its own (`_check_shard`) and of the segments of
    those it parsed against their units (`segment_problems`)."""
    checked = list((pool.map if pool else map)(
        lambda shard: _check_shard(store, shard, indexed.get(shard), reparse, etags), shards))
    problems = [p for c in checked for p in c.problems]
    trusted = [shard for shard, c in zip(shards, checked) if c.keys is None]
    keys = keyed({shard: c.keys for shard, c in zip(shards, checked) if c.keys is not None})
    problems += segment_problems(keys["files"], keys["segments"])
    segments = keys["segments"].num_rows + sum(c.segments for c in checked if c.keys is None)
    routed = {shard: c.routed for shard, c in zip(shards, checked) if c.routed}
    return _Block(problems, keys["files"].column("unit_id"), segments, trusted, routed)


def _routes_to(store: OutputStore) -> set[str]:
    """The model files in other languages are routed to in this job (none, if it flags them)."""
    job = read_job(store)
    if job is None or job.fingerprint_fields.get("other_languages") != "route":
        return set()
    return {job.spec.get("language_check")}


@dataclass
class _Shard:
    """What the check of one committed shard hands its block: its problems, the key
    columns of its parts (`KEYS`) for the check of segments against units, or None if
    they were not parsed (both checked by their writer, sha256 unchanged), and then the
    number of segments its marker records."""

    problems: list[str]
    keys: dict[str, pa.Table] | None
    segments: int = 0
    routed: set[str] = field(default_factory=set)


def _check_shard(store: OutputStore, shard: int, indexed: str | None, reparse: bool,
                 etags: dict[str, str] | None = None) -> _Shard:
    """The problems of one committed shard's marker and parts, and what its block needs.

    On an object store whose listing gave `etags`, a marker whose ETag is the MD5 of the
    index's marker written out is that marker, and a part whose ETag is the MD5 its
    marker records is the writer's bytes: a shard whose marker and both parts (checked
    by their writer) are so is not read at all."""
    listed = _listed(store, shard, indexed, etags)
    if listed is not None:
        return listed
    problems, data = [], {}
    written = store.read_json(store.marker_path(shard))
    marker = None if written is None else CommitMarker.from_json(written)
    # The same JSON is the same marker; other JSON may still be (written by an older
    # bulkscribe, without fields the index's has), so that is compared as markers.
    if indexed is not None and (index_json := json.loads(indexed)) != written and \
            CommitMarker.from_json(index_json) != marker:
        problems.append(f"shard {shard}: the marker index (_index/markers.parquet) holds another marker "
                        "than _commits/, so status would misreport it")
    unchanged = 0  # parts checked by their writer whose bytes are still those
    for table in TABLES:
        try:
            blob = store.read_bytes(store.part_path(table, shard))
        except FileNotFoundError:
            problems.append(f"shard {shard}: marker exists but {table} part is missing")
            continue
        expected = marker.parts.get(table) if marker is not None else None
        if expected is None:
            problems.append(f"shard {shard}: its marker does not record the {table} part")
            continue
        if hashlib.sha256(blob).hexdigest() != expected.sha256:
            problems.append(f"shard {shard}: sha256 of the {table} part does not match its marker")
        else:
            unchanged += expected.checked
        data[table] = blob
    routed = _routed(marker.languages if marker is not None else None)
    if unchanged == len(TABLES) and not reparse:
        return _Shard(problems, None, marker.parts["segments"].rows, routed)
    keys = {}
    for table, blob in data.items():
        if (part := part_keys(shard, table, blob, marker.parts[table].rows, problems)) is not None:
            keys[table] = part
    return _Shard(problems, keys, routed=routed)


def _routed(languages: dict[str, int] | None) -> set[str]:
    """The models a marker's `languages` ("ru base") name beside the job's own."""
    return {key.split(" ", 1)[1] for key in languages or {} if " " in key}


def _listed(store: OutputStore, shard: int, indexed: str | None, etags: dict[str, str] | None) -> _Shard | None:
    """`_check_shard`'s answer from the listing's ETags alone (none with `reparse`), or
    None if it needs reads."""
    if etags is None or indexed is None:
        return None
    data = json.loads(indexed)
    if etags.get(store.marker_path(shard)) != hashlib.md5(json_bytes(data)).hexdigest():
        return None
    parts = CommitMarker.from_json(data).parts
    for table in TABLES:
        part = parts.get(table)
        if part is None or not part.checked or part.md5 is None or etags.get(store.part_path(table, shard)) != part.md5:
            return None
    return _Shard([], None, parts["segments"].rows, _routed(data.get("languages")))



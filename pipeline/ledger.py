"""The job's own records in its output folder: `job.json`, the plan's parts (appended,
never rewritten), a record per run and each shard's count of attempts."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pyarrow as pa

from pipeline.parquet import parquet_bytes
from pipeline.records import JobRecord, RunRecord
from pipeline.store import OutputStore, PlanConflictError, json_bytes

_PART_RE = re.compile(r"part-(\d{6,})\.parquet$")


def read_job(store: OutputStore) -> JobRecord | None:
    data = store.read_json(store.path("job.json"))
    return None if data is None else JobRecord.from_json(data)


def write_job(store: OutputStore, job: JobRecord) -> None:
    store.write_json(store.path("job.json"), job.to_json())


def create_job(store: OutputStore, job: JobRecord) -> None:
    """Write `job.json` of a new folder, create-only (PlanConflictError if another run
    made the folder a job meanwhile: a stale driver's late write cannot replace it)."""
    if not store.create_only(store.path("job.json"), json_bytes(job.to_json())):
        raise PlanConflictError(f"{store.uri()}: another run made this folder a job meanwhile; run again")


def plan_parts(store: OutputStore) -> list[str]:
    return [p for p in store.glob(store.path("_plan", "part-*.parquet")) if _PART_RE.search(p)]


def read_plan(store: OutputStore, parts: list[str] | None = None) -> pa.Table | None:
    """The plan: its `parts` (as `plan_parts` listed them), or all there are."""
    tables = [store.read_parquet(p) for p in (plan_parts(store) if parts is None else parts)]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def append_plan(store: OutputStore, table: pa.Table, after: list[str] | None = None) -> str:
    """Add a plan part after `after`, the parts the new shards were numbered from
    (default: those there are now), create-only. The part's number follows from the
    plan its writer read, not from a second listing: of two drivers that planned from
    the same plan (a stale one and the run that took its folder over, whenever the
    stale write lands), the second is refused rather than give one shard number to
    different files."""
    parts = plan_parts(store) if after is None else after
    number = int(_PART_RE.search(parts[-1]).group(1)) + 1 if parts else 0
    path = store.path("_plan", f"part-{number:06d}.parquet")
    if not store.create_only(path, parquet_bytes(table)):
        raise PlanConflictError(f"{store.uri()}: plan part {number} was written by another run meanwhile; "
                                "run again to plan after it")
    return path


def next_attempt(store: OutputStore, shard: int, by: dict[str, Any] | None = None) -> int:
    """Count one more start of `shard` and return its number (1 for the first).

    `by` (the node and process of the attempt) is recorded beside the count.
    """
    path = store.path("_attempts", f"{shard:06d}.json")
    previous = (store.read_json(path) or {}).get("attempts", 0)
    store.write_json(path, {"attempts": previous + 1, **(by or {})})
    return previous + 1


def write_run(store: OutputStore, record: RunRecord) -> None:
    name = f"{record.started_at.replace(':', '').replace('-', '')}-{uuid.uuid4().hex[:8]}.json"
    store.write_json(store.path("_runs", name), record.to_json())


def run_records(store: OutputStore) -> list[RunRecord]:
    return [RunRecord.from_json(r) for p in store.glob(store.path("_runs", "*.json")) if (r := store.read_json(p))]

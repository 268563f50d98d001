"""The marker index (`_index/markers.parquet`): every committed shard's marker in one
file, so that a folder of 10^5 shards is read with a listing and one GET. A cache: the
markers stay the truth, and every entry carries its marker's version, so an entry that
differs from its marker is found and written again."""

from __future__ import annotations

import json
import logging
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.markers import committed_shards, marker_versions, read_markers
from pipeline.parquet import parquet_bytes
from pipeline.records import CommitMarker
from pipeline.store import OutputStore, PlanConflictError

logger = logging.getLogger(__name__)


def all_markers(store: OutputStore) -> list[CommitMarker]:
    """The marker of every committed shard, in shard order: from the marker index for
    the shards it holds, one read each (in parallel) for the others. A folder of 10^5
    shards is then read with its listing and one GET, not 10^5 GETs."""
    return _markers_and_versions(store)[0]


def _markers_and_versions(store: OutputStore) -> tuple[list[CommitMarker], dict[int, str | None], bool]:
    """`all_markers`, the version of each (`marker_versions`), and whether the index
    differs from them: lacks a committed shard, holds one whose marker is gone, or
    holds a marker other than the one there now (its version differs: a marker
    replaced since, or an index entry a stale writer put there)."""
    versions = marker_versions(store)
    committed = sorted(versions)
    table = _index_table(store)
    indexed, indexed_versions = {}, {}
    if table is not None:
        shards = table.column("shard").to_pylist()
        indexed = _parsed(dict(zip(shards, table.column("marker").to_pylist())))
        if "version" in table.column_names:
            indexed_versions = dict(zip(shards, table.column("version").to_pylist()))
    missing = [s for s in committed
               if s not in indexed or (versions[s] is not None and indexed_versions.get(s) != versions[s])]
    fetched = read_markers(store, missing)
    markers = [m for s in committed if (m := fetched.get(s) or indexed.get(s)) is not None]
    return markers, versions, bool(missing) or len(indexed) != len(committed)


def reported_markers(store: OutputStore, planned: Iterable[int]) -> list[CommitMarker]:
    """The markers of the `planned` shards for a report (`status`), read cheaply: the
    index's, and those of the shards it lacks, found by listing only their key ranges.
    A finished job's folder is then read with the index alone (`all_markers` lists all
    10^5 markers of one). Runs write the index from the markers and `retry-failed`
    takes a shard out of it before replacing its marker, so the two agree unless a
    marker was deleted by hand: such a shard counts here until the next run rewrites
    the index, and `verify` (which lists every marker) reports it."""
    indexed = indexed_markers(store)
    planned = set(planned)
    lacking = sorted(committed_shards(store, among=planned - indexed.keys()))
    fetched = read_markers(store, lacking)
    return [m for s in sorted(planned) if (m := indexed.get(s) or fetched.get(s)) is not None]


def index_path(store: OutputStore) -> str:
    return store.path("_index", "markers.parquet")


def indexed_markers(store: OutputStore) -> dict[int, CommitMarker]:
    """The markers `_index/markers.parquet` holds. A cache written by the run holding
    the lease: markers stay the truth (a shard without a marker is not committed,
    whatever the index says), and a run that writes a shard's marker again (`retry-failed`,
    or a run after a marker was deleted) takes the shard out of the index first
    (`unindex`), so an entry is never older than its marker."""
    return _parsed(index_entries(store))


def index_entries(store: OutputStore) -> dict[int, str]:
    """The index as it is stored: each shard's marker as JSON text (parsing 10^5 of
    them takes seconds: `verify` leaves it to its workers)."""
    table = _index_table(store)
    if table is None:
        return {}
    return dict(zip(table.column("shard").to_pylist(), table.column("marker").to_pylist()))


def _index_table(store: OutputStore) -> pa.Table | None:
    try:
        return store.read_parquet(index_path(store))
    except FileNotFoundError:
        return None


def update_index(store: OutputStore, before_write: Callable[[], None] = lambda: None) -> list[CommitMarker]:
    """Every committed shard's marker (`all_markers`); the index is written again only if
    it differs from them (an entry missing, extra or of another version of its
    marker), after `before_write` (the lease check) has passed. A rerun that finds
    every marker indexed writes nothing. The write is conditional on the index read:
    one that lands after another run's (a stale driver's) is refused, and the index
    is read and compared again."""
    for _ in range(5):
        index_version = store.version(index_path(store))
        markers, versions, stale = _markers_and_versions(store)
        if not stale:
            return markers
        before_write()
        if write_index(store, markers, versions, expected=index_version):
            return markers
        logger.info("the marker index was written by another run meanwhile; reading it again")
    raise PlanConflictError(f"{store.uri()}: the marker index kept changing while this run wrote it")


def write_index(store: OutputStore, markers: list[CommitMarker], versions: dict[int, str | None] | None = None, *,
                expected: str | None | bool = True) -> bool:
    """Make the index hold `markers` (under the lease), each with its marker's version
    (`marker_versions`); conditional on the index's version `expected` (None: no
    index; True: unconditional). Whether it was written."""
    versions = versions or {}
    table = pa.table({
        "shard": pa.array([m.shard for m in markers], pa.int32()),
        "marker": pa.array([json.dumps(m.to_json(), sort_keys=True) for m in markers], pa.string()),
        "version": pa.array([versions.get(m.shard) for m in markers], pa.string()),
    })
    if expected is True:
        store.write_bytes(index_path(store), parquet_bytes(table))
        return True
    return store.replace_if(index_path(store), parquet_bytes(table), expected) is not None


def unindex(store: OutputStore, shards: Iterable[int]) -> None:
    """Take `shards` out of the index before their markers are replaced (`retry-failed`)
    or written anew (a shard whose marker was deleted runs again); conditional on the
    index read, like `update_index`."""
    shards = pa.array(list(shards), pa.int32())
    for _ in range(5):
        version = store.version(index_path(store))
        table = _index_table(store)
        if table is None:
            return
        kept = table.filter(pc.invert(pc.is_in(table.column("shard"), shards)))
        if kept.num_rows == table.num_rows or store.replace_if(index_path(store), parquet_bytes(kept), version):
            return
    raise PlanConflictError(f"{store.uri()}: the marker index kept changing while this run wrote it")


def _parsed(entries: dict[int, str]) -> dict[int, CommitMarker]:
    """The markers of index entries (each a marker's JSON text)."""
    return {shard: CommitMarker.from_json(json.loads(blob)) for shard, blob in entries.items()}

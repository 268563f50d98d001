"""Committed parts copied together into few big files, for the query views.

```
OUT/_index/compacted.parquet               the catalog: table, file, shard, sha256
OUT/_index/segments/NNNNNN-MMMMMM-ID.parquet   the segment rows of many committed shards
OUT/_index/files/NNNNNN-MMMMMM-ID.parquet      their files rows
```

A query over 10^5 shards opens 10^5 parts (one request or more each on an object
store); over their compacted copies, about a hundred files. The parts stay where they
are, the output contract's files: a compacted file is a cache of them, like the marker
index. The catalog records, for each shard a compacted file holds, the sha256 of the
part its rows were read from (checked against the marker when copied). A reader uses a
compacted file only if every shard in it is still committed with a marker (in the
marker index) naming that same sha256; otherwise it reads those shards' parts. So a
compacted file never shows rows a marker does not commit, and never hides a newer part.

Compaction runs under the folder's lease: at the end of a run once enough shards wait
(`COMPACT_AT_SHARDS`), or by `bulkscribe compact`. Compacted files are written before
the catalog that names them. A file the catalog no longer names is not deleted at once:
a reader that read the catalog before (a query, a notebook's open folder) may still be
reading it. `_index/retired.json` records when each was left out, and a compaction
deletes those left out `RETIRED_KEEP_S` or longer ago.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.index import index_entries
from pipeline.parquet import parquet_bytes, read_parquet_bytes
from pipeline.records import CommitMarker, Part
from pipeline.store import PARALLEL_REQUESTS, TABLES, OutputStore

logger = logging.getLogger(__name__)

# A run compacts at its end once this many committed shards are in no compacted file;
# so a finished folder's views read at most this many parts of a table besides its
# compacted files.
COMPACT_AT_SHARDS = 1000
# One compacted file holds at most this many shards, and parts of at most this many
# bytes in all (memory while one is built: a few times that).
SHARDS_PER_FILE = 1000
PART_BYTES_PER_FILE = 64 << 20
# A compacted file the catalog no longer names is deleted this long after it was left
# out; a reader that opened the folder before and reads it later than that must open
# the folder again.
RETIRED_KEEP_S = 3600.0

_CATALOG_SCHEMA = pa.schema([
    pa.field("table", pa.string()),
    pa.field("file", pa.string()),  # relative to the output folder
    pa.field("shard", pa.int32()),
    pa.field("sha256", pa.string()),
])


def catalog_path(store: OutputStore) -> str:
    return store.path("_index", "compacted.parquet")


def retired_path(store: OutputStore) -> str:
    return store.path("_index", "retired.json")


@dataclass
class Sources:
    """What a reader of one table opens: the compacted files in use and the parts of the
    committed shards none of them holds."""

    compacted: list[str] = field(default_factory=list)
    covered: set[int] = field(default_factory=set)

    def paths(self, store: OutputStore, table: str, committed: list[int]) -> list[str]:
        return self.compacted + [store.part_path(table, s) for s in committed if s not in self.covered]


@dataclass(frozen=True)
class Compaction:
    shards: int  # shards copied into new compacted files
    files: int  # compacted files written (both tables), new or trimmed of shards gone stale
    dropped: int  # compacted files the catalog names no more (deleted RETIRED_KEEP_S later)
    waiting: int  # committed shards left in no compacted file
    deleted: int  # compacted files deleted, left out RETIRED_KEEP_S or longer ago


def read_catalog(store: OutputStore) -> pa.Table | None:
    try:
        return store.read_parquet(catalog_path(store))
    except FileNotFoundError:
        return None


def indexed_parts(entries: dict[int, str]) -> dict[str, dict[int, Part]]:
    """Per table, each shard's part as the marker index (`index_entries`) records it."""
    out: dict[str, dict[int, Part]] = {t: {} for t in TABLES}
    for shard, blob in entries.items():
        for table, part in json.loads(blob).get("parts", {}).items():
            if table in out:
                out[table][shard] = Part.from_json(part)
    return out


def marker_parts(markers: list[CommitMarker]) -> dict[str, dict[int, Part]]:
    """Per table, each shard's part as `markers` record it."""
    return {t: {m.shard: m.parts[t] for m in markers if t in m.parts} for t in TABLES}


def _files_of(catalog: pa.Table | None) -> dict[str, dict[str, dict[int, str]]]:
    """Per table, each compacted file the catalog names: its shards and their parts' sha256."""
    files: dict[str, dict[str, dict[int, str]]] = {t: {} for t in TABLES}
    if catalog is not None:
        for table, name, shard, digest in zip(*(catalog.column(c).to_pylist() for c in _CATALOG_SCHEMA.names)):
            if table in files:
                files[table].setdefault(name, {})[shard] = digest
    return files


def _current(shards: dict[int, str], parts: dict[int, Part], seen: set[int]) -> list[int]:
    """The shards of a compacted file whose rows are still those their marker commits
    (and that no file before it holds)."""
    return [s for s, digest in shards.items() if s in parts and parts[s].sha256 == digest and s not in seen]


def usable(catalog: pa.Table | None, parts: dict[str, dict[int, Part]]) -> dict[str, dict[str, list[int]]]:
    """Per table, the compacted files of `catalog` whose every shard is committed with
    the part the file was made from (`parts`: the committed shards'), and their shards.
    A shard is read from one file at most: a later file that holds it again is not used."""
    out: dict[str, dict[str, list[int]]] = {t: {} for t in TABLES}
    for table, files in _files_of(catalog).items():
        seen: set[int] = set()
        for name, shards in files.items():
            current = _current(shards, parts[table], seen)
            if len(current) == len(shards):
                out[table][name] = current
                seen.update(current)
    return out


def sources(store: OutputStore, committed: list[int]) -> dict[str, Sources]:
    """Per table, the files a reader of the committed shards opens (see the module's text):
    without a catalog, the parts; with one, also the marker index (one read each) and
    a listing of the compacted files (one named but gone is not used)."""
    catalog = read_catalog(store)
    if catalog is None or catalog.num_rows == 0:
        return {t: Sources() for t in TABLES}
    in_use = _in_use(catalog, committed, indexed_parts(index_entries(store)), _present(store))
    return {
        table: Sources(compacted=[store.path(name) for name in sorted(names)],
                       covered={s for shards in names.values() for s in shards})
        for table, names in in_use.items()
    }


def _in_use(catalog: pa.Table, committed: Iterable[int], indexed: dict[str, dict[int, Part]],
            present: dict[str, set[str]]) -> dict[str, dict[str, list[int]]]:
    """`usable` for the listed `committed` shards and the markers in the index
    (`indexed_parts`), less the files that are gone (not among those `present`)."""
    listed = set(committed)
    in_use = usable(catalog, {t: {s: p for s, p in indexed[t].items() if s in listed} for t in TABLES})
    for table, files in in_use.items():
        for name in [n for n in files if n not in present[table]]:
            logger.warning("compacted file %s is gone: the parts of its shards are read instead", name)
            del files[name]
    return in_use


def _present(store: OutputStore) -> dict[str, set[str]]:
    """Per table, the compacted files there are (names relative to the folder): one listing each."""
    return {table: {posixpath.relpath(p, store.root) for p in store.glob(store.path("_index", table, "*.parquet"))}
            for table in TABLES}


def problems(store: OutputStore, committed: Iterable[int], entries: dict[int, str]) -> list[str]:
    """What `verify` finds wrong in the compacted files the views would read: one that is
    gone, or whose rows per shard are not as many as the marker gives the shard's part.
    `entries`: the marker index (`index_entries`), as the caller read it."""
    catalog = read_catalog(store)
    if catalog is None:
        return []
    present = _present(store)
    found = [f"compacted file {name} is named in {posixpath.relpath(catalog_path(store), store.root)} "
             "but gone (the views read its shards' parts; `bulkscribe compact` writes it again)"
             for table, files in _files_of(catalog).items() for name in files if name not in present[table]]
    indexed = indexed_parts(entries)
    for table, files in _in_use(catalog, committed, indexed, present).items():
        for name, shards in files.items():
            rows = Counter(read_parquet_bytes(store.read_bytes(store.path(name)), ["shard"]).column(0).to_pylist())
            expected = {s: indexed[table][s].rows for s in shards}
            for shard in sorted(rows.keys() | expected.keys()):
                if rows.get(shard, 0) != expected.get(shard, 0):
                    found.append(f"compacted file {name} holds {rows.get(shard, 0)} row(s) of shard {shard}, "
                                 f"whose {table} part has {expected.get(shard, 0)}")
    return found


def compact(store: OutputStore, markers: list[CommitMarker] | None = None, *, at_least: int = 1,
            before_write: Callable[[], None] = lambda: None) -> Compaction:
    """Bring the compacted files up to date with the committed shards: a file that holds
    a shard whose marker changed or went is written again without it (from the file
    itself), one that is gone is dropped from the catalog, and the shards no file of a table holds are copied into new files of it,
    if `at_least` of them wait in some table. The shards are those of the marker index,
    or `markers` (what `update_index` just wrote there); `before_write` (the lease
    check) runs before each write."""
    parts = indexed_parts(index_entries(store)) if markers is None else marker_parts(markers)
    catalog = _files_of(read_catalog(store))
    present = _present(store)
    rows: dict[str, list] = {c: [] for c in _CATALOG_SCHEMA.names}
    trimmed = 0
    covered: dict[str, set[int]] = {t: set() for t in TABLES}
    for table, files in catalog.items():
        for name, shards in files.items():
            # A file that is gone is dropped: its shards are copied again.
            current = _current(shards, parts[table], covered[table]) if name in present[table] else []
            if len(current) < len(shards) and current:
                before_write()
                name = _trim(store, table, name, current)
                trimmed += 1
            _add_rows(rows, table, name, current, parts[table])
            covered[table].update(current)
    named = {name for files in catalog.values() for name in files}
    waiting = {t: sorted(set(parts[t]) - covered[t]) for t in TABLES}
    copied: set[int] = set()
    written = 0
    if max(len(w) for w in waiting.values()) >= at_least:
        for table in TABLES:
            for group in _groups(waiting[table], {s: parts[table][s].bytes for s in waiting[table]}):
                name, current = _copy_parts(store, table, group, parts[table], before_write)
                if current:
                    _add_rows(rows, table, name, current, parts[table])
                    covered[table].update(current)
                    copied.update(current)
                    written += 1
    dropped = named - set(rows["file"])
    if written or trimmed or dropped:
        before_write()
        store.write_bytes(catalog_path(store), parquet_bytes(pa.table(rows, schema=_CATALOG_SCHEMA)))
    deleted = _retire(store, set().union(*present.values()) - set(rows["file"]), before_write)
    committed = set().union(*(p.keys() for p in parts.values()))
    return Compaction(shards=len(copied), files=written + trimmed, dropped=len(dropped),
                      waiting=len(committed - set.intersection(*covered.values())), deleted=deleted)


def _retire(store: OutputStore, unnamed: set[str], before_write: Callable[[], None]) -> int:
    """Delete the compacted files no catalog has named for RETIRED_KEEP_S, and record when
    the others of `unnamed` (there, but not named by the catalog just written) were left
    out. A file is left out when a compaction drops it, or when the first compaction
    after a crash finds one it wrote but never named. Returns how many were deleted."""
    now = time.time()
    recorded = store.read_json(retired_path(store)) or {}
    since = {name: recorded.get(name, now) for name in sorted(unnamed)}
    expired = [name for name, left_out in since.items() if now - left_out >= RETIRED_KEEP_S]
    kept = {name: left_out for name, left_out in since.items() if name not in expired}
    if not expired and kept == recorded:
        return 0
    before_write()
    for name in expired:
        store.delete(store.path(name))
    if kept != recorded:
        store.write_json(retired_path(store), kept)
    return len(expired)


def _add_rows(rows: dict[str, list], table: str, name: str, shards: list[int], parts: dict[int, Part]) -> None:
    rows["table"] += [table] * len(shards)
    rows["file"] += [name] * len(shards)
    rows["shard"] += shards
    rows["sha256"] += [parts[s].sha256 for s in shards]


def _groups(shards: list[int], sizes: dict[int, int]) -> list[list[int]]:
    """`shards` in order, cut into groups of at most SHARDS_PER_FILE shards and
    PART_BYTES_PER_FILE bytes (a bigger shard is a group of its own)."""
    groups: list[list[int]] = []
    group: list[int] = []
    size = 0
    for shard in shards:
        if group and (len(group) >= SHARDS_PER_FILE or size + sizes[shard] > PART_BYTES_PER_FILE):
            groups.append(group)
            group, size = [], 0
        group.append(shard)
        size += sizes[shard]
    return groups + ([group] if group else [])


def _name(table: str, shards: list[int]) -> str:
    return posixpath.join("_index", table, f"{min(shards):06d}-{max(shards):06d}-{uuid.uuid4().hex[:8]}.parquet")


def _copy_parts(store: OutputStore, table: str, group: list[int], parts: dict[int, Part],
                before_write: Callable[[], None]) -> tuple[str, list[int]]:
    """Write one compacted file of `table` from the parts of `group`; its name and the
    shards it holds. A part whose bytes no longer match its marker is left out (`verify`
    reports it)."""
    def read(shard: int) -> bytes:
        return store.read_bytes(store.part_path(table, shard))

    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        blobs = list(pool.map(read, group))
    shards, tables = [], []
    for shard, blob in zip(group, blobs):
        if hashlib.sha256(blob).hexdigest() != parts[shard].sha256:
            logger.warning("%s part of shard %06d differs from its marker: not compacted (see `bulkscribe verify`)",
                           table, shard)
            continue
        shards.append(shard)
        tables.append(read_parquet_bytes(blob))
    if not shards:
        return "", []
    name = _name(table, shards)
    before_write()
    store.write_bytes(store.path(name), parquet_bytes(pa.concat_tables(tables, promote_options="permissive")))
    return name, shards


def _trim(store: OutputStore, table: str, name: str, keep: list[int]) -> str:
    """A new compacted file with the rows of `name` whose shard is in `keep`; its name."""
    rows = store.read_parquet(store.path(name))
    kept = rows.filter(pc.is_in(rows.column("shard"), pa.array(keep, pa.int32())))
    new = _name(table, keep)
    store.write_bytes(store.path(new), parquet_bytes(kept))
    return new

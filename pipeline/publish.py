"""A shard's parts, staged under names of their attempt (`_staged/TABLE/NNNNNN-T.parquet`)
and published under the shard's fixed names once its marker names the attempt.

The commit protocol (`pipeline.commit`): stage the parts, create the marker, publish.
Publication replaces each part conditionally (`OutputStore.replace_if`), so a publisher
that stalled past a newer commit of its shard is refused by the store whenever its write
lands. Readers take a committed shard whose parts are still staged from its staged
parts (`unpublished`); runs finish such publications (`publish_pending`).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from typing import Iterable

import pyarrow as pa

from pipeline.markers import read_marker
from pipeline.parquet import parquet_bytes
from pipeline.records import CommitMarker, Part
from pipeline.store import TABLES, OutputStore

logger = logging.getLogger(__name__)

_STAGED_RE = re.compile(r"^(\d{6,})-([0-9a-f]+)\.parquet$")


def write_part(store: OutputStore, table_name: str, shard: int, table: pa.Table) -> Part:
    """Write one shard's part of `table_name` in place, unstaged (a folder built by hand,
    as tests and benchmarks build them: runs stage and publish); returns what the marker
    records of it."""
    return write_part_bytes(store, table_name, shard, parquet_bytes(table), table.num_rows)


def write_part_bytes(store: OutputStore, table_name: str, shard: int, data: bytes, rows: int, *,
                     checked: bool = False) -> Part:
    """Write one shard's part of `table_name` as the Parquet `data` of `rows` rows
    (`checked`: see `Part.checked`)."""
    store.write_bytes(store.part_path(table_name, shard), data)
    return _part(data, rows, checked)


def staged_path(store: OutputStore, table_name: str, shard: int, attempt: str) -> str:
    return store.path("_staged", table_name, f"{shard:06d}-{attempt}.parquet")


def stage_part(store: OutputStore, table_name: str, shard: int, attempt: str, data: bytes, rows: int, *,
               checked: bool = False) -> Part:
    """Write one part of attempt `attempt` of `shard` under a name of its own; no reader
    sees it until a marker naming the attempt publishes it (`publish`)."""
    store.write_bytes(staged_path(store, table_name, shard, attempt), data)
    return _part(data, rows, checked)


def publish(store: OutputStore, shard: int, attempt: str, parts: dict[str, bytes], *, first: bool = False) -> bool:
    """Make the shard's parts (`segments/part-NNNNNN.parquet`, `files/...`) hold
    `parts`, the staged parts of `attempt`, then remove the staged copies. Each part
    is replaced conditionally (`replace_if`) on the version read before the marker
    was found naming `attempt`: a publisher that stalled while a newer marker (of
    `retry-failed`) was written and published finds its write refused, whenever it
    lands. Returns False, publishing nothing more, once the marker names another
    attempt: this writer is stale.

    `first`: the caller has just created the shard's first marker. Its parts are then
    created create-only without reading anything first (the marker it made was seen
    before), and only a part found there already goes the long way."""
    digests = {t: hashlib.md5(data).hexdigest() for t, data in parts.items()}
    if first:
        parts = {t: data for t, data in parts.items()
                 if store.replace_if(store.part_path(t, shard), data, None) is None}
    for tries in range(101):
        if not parts:
            break
        if tries == 100:
            raise RuntimeError(f"shard {shard}: its parts were replaced by others 100 times while this run "
                               "published them")
        # The versions first, then the marker: a replacement conditional on a version
        # read before the marker was seen naming this attempt.
        versions = {t: store.version(store.part_path(t, shard)) for t in parts}
        parts = {t: data for t, data in parts.items() if versions[t] != digests[t]}
        if not parts:
            break
        marker = read_marker(store, shard)
        if marker is None or marker.staged != attempt:
            logger.warning("shard %06d: its marker names another attempt than %s; not published", shard, attempt)
            return False
        # Each part stays as it is unless another publisher of the shard went first:
        # then look again.
        parts = {t: data for t, data in parts.items()
                 if store.replace_if(store.part_path(t, shard), data, versions[t]) is None}
    for table_name in digests:
        store.delete(staged_path(store, table_name, shard, attempt))
    return True


def staged(store: OutputStore) -> dict[int, dict[str, set[str]]]:
    """The staged parts there are: {shard: {attempt: {table, ...}}} (one listing per table)."""
    found: dict[int, dict[str, set[str]]] = {}
    for table_name in TABLES:
        for path in store.glob(store.path("_staged", table_name, "*.parquet")):
            match = _STAGED_RE.search(posixpath.basename(path))
            if match:
                found.setdefault(int(match.group(1)), {}).setdefault(match.group(2), set()).add(table_name)
    return found


def unpublished(store: OutputStore, among: Iterable[int]) -> dict[int, str]:
    """The shards of `among` (committed ones) whose marker's parts are still staged:
    {shard: attempt}. A commit between its marker and its publication, or one cut
    short there; readers take the staged parts for these (the marker's own bytes).
    One listing per table, and a marker read per shard with staged parts."""
    among = set(among)
    found = {}
    for shard, attempts in staged(store).items():
        if shard in among and (marker := read_marker(store, shard)) is not None:
            if attempts.get(marker.staged) == set(TABLES) and not published(store, shard, marker):
                found[shard] = marker.staged
    return found


def published(store: OutputStore, shard: int, marker: CommitMarker) -> bool:
    """Whether the shard's parts in place are those `marker` records (staged copies
    may outlive their publication: a late write of one landing after it)."""
    return all(marker.parts[t].md5 is not None and store.version(store.part_path(t, shard)) == marker.parts[t].md5
               for t in TABLES)


def publish_pending(store: OutputStore) -> tuple[int, int]:
    """Finish what interrupted commits left (called under the lease, before a run's
    own writes): publish the staged parts a marker names but that are not in place
    yet (an attempt stopped between its marker and its parts), and remove staged
    parts no marker names where a marker exists (attempts that lost their commit).
    Staged parts of uncommitted shards stay: a stalled attempt may still commit them.
    Returns (published, removed)."""
    published = removed = 0
    for shard, attempts in sorted(staged(store).items()):
        marker = read_marker(store, shard)
        if marker is None:
            continue
        for attempt, tables in attempts.items():
            if attempt == marker.staged and tables == set(TABLES):
                published += finish_publication(store, shard, marker)
                continue
            # Another attempt's (it lost the commit), or what is left of the marker's own
            # once published (the removal of its staged copies was cut short).
            for table_name in tables:
                store.delete(staged_path(store, table_name, shard, attempt))
            removed += attempt != marker.staged
    return published, removed


def finish_publication(store: OutputStore, shard: int, marker: CommitMarker) -> bool:
    """Publish the staged parts `marker` names, if they are not in place yet (its
    attempt stopped between marker and parts: an actor killed there, whose shard the
    next attempt finds committed). Whether it published anything."""
    if marker.staged is None or published(store, shard, marker):
        return False
    try:
        blobs = {t: store.read_bytes(staged_path(store, t, shard, marker.staged)) for t in TABLES}
    except FileNotFoundError:  # published meanwhile, and its staged copies removed
        return False
    if any(hashlib.sha256(blobs[t]).hexdigest() != marker.parts[t].sha256 for t in TABLES):
        return False  # not the marker's bytes: left for `verify` to report
    return publish(store, shard, marker.staged, blobs)


def _part(data: bytes, rows: int, checked: bool) -> Part:
    """What a marker records of a part written as `data`."""
    return Part(rows=rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), checked=checked,
                md5=hashlib.md5(data).hexdigest())

"""Commit markers: created create-only (the first commit of a shard wins), read, and
found by listing (`committed_shards`, `marker_versions`)."""

from __future__ import annotations

import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from pipeline.listing import lists_by_prefix, strict_listing
from pipeline.records import CommitMarker
from pipeline.retry import retry
from pipeline.store import PARALLEL_REQUESTS, SHARD_FILE_RE, OutputStore, json_bytes, shard_numbers

logger = logging.getLogger(__name__)


def commit_marker(store: OutputStore, shard: int, marker: CommitMarker) -> bool:
    """Create the marker of `shard`; False if an earlier attempt's is there already."""
    blob = json_bytes(marker.to_json())
    created = store.create_only(store.marker_path(shard), blob)
    if not created:
        logger.info("shard %06d was already committed by an earlier attempt; this one is dropped", shard)
    return created


def committed_shards(store: OutputStore, among: Iterable[int] | None = None) -> set[int]:
    """The committed shards, or those of `among` only. In an object store `among` is
    found by listing only the key ranges of 1,000 shard numbers (names alike but for
    their last three digits: a listing page each) that hold one of them,
    `PARALLEL_REQUESTS` ranges at once: the pages of one listing come one after
    another, 100 of them for 10^5 markers."""
    if among is None:
        return store.shards_in("_commits", "*.json")
    among = set(among)
    if not among:
        return set()
    if store.local or not lists_by_prefix(store.fs):
        return store.shards_in("_commits", "*.json") & among
    folder = store.path("_commits")
    prefixes = sorted({f"{shard:06d}"[:-3] for shard in among})  # 000123.json: "000"; 1234567.json: "1234"

    def listed(prefix: str) -> list[str]:
        store.fs.invalidate_cache(folder)
        # No strict_listing: these filesystems list a prefix in one request, and raise.
        return retry(lambda: store.fs.find(folder, prefix=prefix), f"list {folder}/{prefix}*")

    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        paths = [p for found in pool.map(listed, prefixes) for p in found]
    return shard_numbers(posixpath.basename(p) for p in paths) & among


def read_marker(store: OutputStore, shard: int) -> CommitMarker | None:
    data = store.read_json(store.marker_path(shard))
    return None if data is None else CommitMarker.from_json(data)


def marker_versions(store: OutputStore) -> dict[int, str | None]:
    """The committed shards, each with a tag of its marker's version from the listing
    alone: the ETag on an object store (None where listings give none), locally
    the file's inode, modification time and size (a marker is replaced by a rename,
    never rewritten in place)."""
    folder = store.path("_commits")
    if store.local:
        try:
            with os.scandir(folder) as entries:
                found = {e.name: e.stat() for e in entries if not e.name.startswith(".") and e.name.endswith(".json")}
        except FileNotFoundError:
            return {}
        return {int(m.group(1)): f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
                for name, st in found.items() if (m := SHARD_FILE_RE.search(name))}
    store.fs.invalidate_cache(folder)
    listed = retry(lambda: strict_listing(store.fs, "find", folder, detail=True), f"list {folder}")
    versions = {}
    for name, info in listed.items():
        if (m := SHARD_FILE_RE.search(posixpath.basename(name))) and name.endswith(".json"):
            tag = info.get("ETag")
            versions[int(m.group(1))] = tag.strip('"') if tag else None
    return versions


def read_markers(store: OutputStore, shards: list[int]) -> dict[int, CommitMarker | None]:
    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        return dict(zip(shards, pool.map(lambda shard: read_marker(store, shard), shards)))

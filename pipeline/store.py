"""The output folder: its layout, atomic writes and create-only commit markers.

```
OUT/job.json                      spec, fingerprint, versions
OUT/_plan/part-NNNNNN.parquet     the shard plan, one file per planning run (appended, never rewritten)
OUT/segments/part-NNNNNN.parquet  segment rows of shard NNNNNN
OUT/files/part-NNNNNN.parquet     one row per unit of shard NNNNNN
OUT/_commits/NNNNNN.json          the shard's commit marker
OUT/_staged/TABLE/NNNNNN-T.parquet  the parts of attempt T, until its marker publishes them
OUT/_attempts/NNNNNN.json         how many times the shard was started
OUT/_runs/*.json                  one record per `bulkscribe run`, for `status`
OUT/_index/markers.parquet        the markers a finished run saw, in one file (a cache)
```

A shard is done only once its marker exists; the marker is created create-only, and the
first commit wins. An attempt writes its parts under names of its own (`_staged/`), then
its marker, which names the attempt; only then are the parts published under the shard's
fixed names (`segments/part-NNNNNN.parquet`), so a plain glob shows committed rows only,
never a torn file (a local part is written under a temporary name and moved into place;
on object stores it is one PUT) and never a duplicate (a retry replaces, never adds).

Fencing: every write that changes what a reader or a later run sees is create-only or
conditional on the version it replaces (`replace_if`: `If-Match` on the ETag on S3, a
compare under a lock file locally), and a publication goes ahead only while the marker
names its attempt. A writer that stalled past a takeover (a frozen driver, an actor
behind a partition) then finds its write refused by the store itself, whenever it lands:
what it would replace has changed. See docs/reliability.md, "Fencing".
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import inspect
import io
import json
import logging
import os
import posixpath
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow._parquet import ParquetReader

from pipeline.records import CommitMarker, JobRecord, Part, RunRecord
from pipeline.retry import error_code, retry, status_of
from pipeline.schema import DICTIONARY_COLUMNS

logger = logging.getLogger(__name__)

TABLES = ("segments", "files")
_PART_RE = re.compile(r"part-(\d{6,})\.parquet$")
_STAGED_RE = re.compile(r"^(\d{6,})-([0-9a-f]+)\.parquet$")
# Storage requests made at once where many small objects are read or stat'ed (object
# stores answer each in tens of ms): markers the index lacks, sizes of manifest rows.
PARALLEL_REQUESTS = 16
_SHARD_FILE_RE = re.compile(r"(\d{6,})\.(?:json|parquet)$")  # 000042.json, part-000042.parquet
# Parquet files at least this big are decoded by Arrow's threads (see read_parquet_bytes).
THREADED_READ_BYTES = 1 << 20


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    dictionary = [c for c in DICTIONARY_COLUMNS if c in table.column_names]
    pq.write_table(table, buf, compression="zstd", use_dictionary=dictionary)
    return buf.getvalue()


def read_parquet_bytes(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """The table in Parquet `data` (only `columns`, if named), read from a copy that Arrow owns.

    Arrow's reader threads may drop the last reference to the buffer after the read
    has returned. Were it the Python `bytes`, that thread would take the GIL to release
    it, and at interpreter exit that aborts the process (SIGABRT, a C++ stack trace
    through PyBuffer::~PyBuffer and take_gil, seen at the end of runs and retries).
    """
    sink = pa.BufferOutputStream()
    sink.write(data)
    # Not read_table (which builds a dataset per call): a 30-row part in 0.3 ms instead of
    # 1.5 ms, which is most of `verify`'s time. Reader threads only pay for big files (a
    # plan of 10^6 units).
    threads = len(data) >= THREADED_READ_BYTES
    reader = ParquetReader()  # what ParquetFile wraps; ParquetFile's own set-up is a fifth of the time
    reader.open(pa.BufferReader(sink.getvalue()))
    if columns is None:
        return reader.read_all(use_threads=threads)
    # Leaf columns, a top-level one as [name]: looking names up here is cheaper than
    # `column_name_idx`, which goes through the whole schema for each name.
    paths = reader.column_paths
    indices = []
    for name in columns:
        try:
            indices.append(paths.index([name]))
        except ValueError:
            raise pa.ArrowInvalid(f"no top-level column {name!r} in the Parquet data") from None
    return reader.read_all(column_indices=indices, use_threads=threads)


class PlanConflictError(RuntimeError):
    """Another run wrote a plan part at the same time."""


class UnsafeStoreError(RuntimeError):
    """The store does not honour conditional writes: two writers could both "win"."""


# The folders of an output folder (README, "Output layout").
FOLDERS = (*TABLES, "_commits", "_staged", "_plan", "_index", "_retry", "_runs", "_attempts", "_probe")
# Seconds a local writer waits for the folder's lock file (held for one compare and rename).
LOCK_WAIT_S = 120.0


class UnsafeOutputError(RuntimeError):
    """A write or a delete would land outside the output folder: a name with `..`, or a
    folder of the output that is a symbolic link to somewhere else."""


class OutputStore:
    """One output folder, local or remote, reached through fsspec.

    Every write and delete goes to a path inside the folder: names are made here, never
    taken from inputs, and `inside` refuses any other (a `..`, or locally a symbolic link
    planted in the folder that leads out of it), so nothing read or planted can make a run
    write or delete elsewhere.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._protocols = protocols
        self.local = "file" in protocols
        if self.local:
            self.root = os.path.abspath(self.root)
        # s3fs asks for an object's size (a HEAD) before each read, to fetch a big one in
        # parallel ranges; the objects read here are small, and one GET is half the requests.
        cat = getattr(self.fs, "_cat_file", None)
        self._one_request = {"max_concurrency": 1} if cat and "max_concurrency" in inspect.signature(cat).parameters else {}

    # -- paths ---------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def part_path(self, table: str, shard: int) -> str:
        return self.path(table, f"part-{shard:06d}.parquet")

    def marker_path(self, shard: int) -> str:
        return self.path("_commits", f"{shard:06d}.json")

    def inside(self, path: str) -> str:
        """`path`, checked to be inside the folder; else UnsafeOutputError."""
        norm = posixpath.normpath(path)
        if not norm.startswith(self.root.rstrip("/") + "/"):
            raise UnsafeOutputError(f"refusing to write or delete {path!r}: outside the output folder {self.url}")
        if self.local:
            root = os.path.realpath(self.root)
            real = os.path.realpath(os.path.dirname(norm))
            if real != root and not real.startswith(root + os.sep):
                raise UnsafeOutputError(
                    f"refusing to write or delete {path!r}: a folder of the output is a symbolic link "
                    f"to {real}, outside the output folder {self.url}; remove the link")
        return norm

    def remove_temporaries(self) -> int:
        """Remove the hidden temporary files (`.NAME.HEX.tmp`) writes left behind when
        they failed or were killed; called by the lease's new holder, before its own
        writes, so none is a live write of its run (a stale writer's, it makes fail).
        Local folders only: object stores write in one PUT. Returns how many."""
        if not self.local:
            return 0
        removed = 0
        nested = [posixpath.join(outer, table) for outer in ("_staged", "_index") for table in TABLES]
        for name in ("", *FOLDERS, *nested):
            folder = self.path(name) if name else self.root
            try:
                entries = [e.path for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
            except (FileNotFoundError, NotADirectoryError):
                continue
            for path in entries:
                try:
                    os.unlink(self.inside(path))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def refuse_links_out(self) -> None:
        """Raise UnsafeOutputError if a folder of a local output is a symbolic link leading
        out of it: found before a run writes anything, not by an actor mid-shard."""
        if not self.local:
            return
        for name in FOLDERS:
            self.inside(self.path(name, "x"))

    def uri(self, *parts: str) -> str:
        """A path as the user would type it (a URL for remote stores)."""
        path = self.path(*parts)
        return path if self.local else self.fs.unstrip_protocol(path)

    # -- atomic writes -------------------------------------------------------------

    def write_bytes(self, path: str, data: bytes) -> None:
        """Make `path` hold `data`, all or nothing."""
        path = self.inside(path)
        if not self.local:
            # One PUT: readers see the old object or the new one.
            retry(lambda: self.fs.pipe_file(path, data), f"write {path}")
            return
        _replace_with(path, data)

    def create_only(self, path: str, data: bytes) -> bool:
        """Write `path` only if it does not exist. Returns whether this call created it.

        Locally the complete file is hard-linked into place: link(2) fails if the name
        exists, so a reader never sees a half-written marker and two writers cannot
        both win.
        """
        path = self.inside(path)
        if not self.local:
            # fsspec's mode="create" is a conditional PUT on S3 (If-None-Match: *): the
            # store itself refuses the second writer. A retry whose first try landed but
            # whose answer was lost (a timeout after the store acted) meets its own
            # object: it is this call's when it holds these very bytes. Every record
            # written create-only holds something of its writer alone (a marker its
            # attempt and timings, a lease its owner), and plan parts with the same bytes
            # plan the same units as the same shards.
            try:
                retry(lambda: self.fs.pipe_file(path, data, mode="create"), f"create {path}")
                return True
            except FileExistsError:
                try:
                    return self.read_bytes(path) == data
                except FileNotFoundError:
                    return False
            except (TypeError, NotImplementedError):
                pass
            # A filesystem without create mode: check, then put. Two commits of one shard
            # in the same instant could both write it (with equivalent markers).
            if retry(lambda: self.fs.exists(path), f"check {path}"):
                return False
            retry(lambda: self.fs.pipe_file(path, data), f"write {path}")
            return True
        tmp = _write_temp_beside(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_folder(os.path.dirname(path))
        return True

    # -- conditional writes (fencing) ----------------------------------------------

    def version(self, path: str) -> str | None:
        """An opaque tag of what `path` holds now, None if nothing: its ETag on an object
        store (a HEAD; a single PUT's is the MD5 of its bytes), the MD5 of its bytes
        locally. What `replace_if` and `delete_if` compare with."""
        if self.local:
            try:
                with open(path, "rb") as f:
                    return hashlib.md5(f.read()).hexdigest()
            except FileNotFoundError:
                return None
        try:
            info = retry(lambda: self.fs.info(path), f"stat {path}")
        except FileNotFoundError:
            return None
        tag = info.get("ETag") or info.get("etag")
        return tag.strip('"') if tag else hashlib.md5(self.read_bytes(path)).hexdigest()

    def replace_if(self, path: str, data: bytes, expected: str | None) -> str | None:
        """Make `path` hold `data` if it holds what `expected` tags now (`version`; None:
        if it does not exist): a compare-and-swap done by the store itself, so a write
        that lands late (stalled in a partition past a takeover) is refused whenever it
        lands, if anything wrote `path` meanwhile. Returns the new version when `path`
        holds `data` afterwards (by this call, or by an earlier try of it whose answer
        was lost), None when something else is there: the caller's view is stale.

        S3 (and stores that speak its conditional PUT): `If-Match: ETAG` or
        `If-None-Match: *`. Locally: compared and renamed into place under the folder's
        lock file (`flock`), which every conditional writer of the folder takes. Other
        stores: compared, then written (no fence: see docs/reliability.md).
        """
        path = self.inside(path)
        digest = hashlib.md5(data).hexdigest()
        if self.local:
            with self._locked():
                current = self.version(path)
                if current != expected:
                    return digest if current == digest else None
                _replace_with(path, data)
                return digest
        if self.conditional:
            condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": f'"{expected}"'}
            try:
                out = retry(lambda: self.fs.pipe_file(path, data, **condition), f"write {path}")
                tag = out.get("ETag") if isinstance(out, dict) else None
                return tag.strip('"') if tag else digest
            except (FileExistsError, FileNotFoundError, OSError) as exc:
                if not _refused(exc):
                    raise
            try:  # refused: ours, if an earlier try landed and its answer was lost
                return self.version(path) if self.read_bytes(path) == data else None
            except FileNotFoundError:
                return None
        current = self.version(path)
        if current != expected:
            return digest if current == digest else None
        self.write_bytes(path, data)
        return digest

    def delete_if(self, path: str, expected: str) -> bool:
        """Delete `path` if it holds what `expected` tags (see `replace_if`); whether it is
        gone afterwards. On S3 a `DeleteObject` with `If-Match`."""
        path = self.inside(path)
        if self.local:
            with self._locked():
                current = self.version(path)
                if current is None:
                    return True
                if current != expected:
                    return False
                os.unlink(path)
                _fsync_folder(os.path.dirname(path))
                return True
        if self.conditional:
            bucket, key, _ = self.fs.split_path(path)
            try:
                retry(lambda: self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=f'"{expected}"'),
                      f"delete {path}")
                self.fs.invalidate_cache(path)
                return True
            except (FileNotFoundError, OSError) as exc:
                if isinstance(exc, FileNotFoundError) or status_of(exc) == 404:
                    return True
                if not _refused(exc):
                    raise
                return False
        if self.version(path) not in (None, expected):
            return False
        self.delete(path)
        return True

    @contextlib.contextmanager
    def _locked(self):
        """The folder's lock file (`OUT/.lock`), held for one compare and write."""
        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.inside(self.path(".lock")), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.path('.lock')} was held for {LOCK_WAIT_S:.0f}s by another process")
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock

    @property
    def conditional(self) -> bool:
        """Whether the store takes S3's conditional PUTs (`If-Match`, `If-None-Match`)."""
        return "s3" in self._protocols or "s3a" in self._protocols

    def check_conditional_writes(self) -> None:
        """Raise UnsafeStoreError if this object store ignores conditional writes (some
        S3-compatible stores, and older versions of others, accept `If-None-Match` and
        `If-Match` and then write anyway): four requests on a probe object, before a run
        relies on them."""
        if not self.conditional:
            return
        path = self.path("_probe", f"{uuid.uuid4().hex}.json")
        try:
            self.create_only(path, b"1")
            second = self.replace_if(path, b"2", None)
            third = self.replace_if(path, b"3", "0" * 32)
        finally:
            self.delete(path)
        if second or third:
            raise UnsafeStoreError(
                f"{self.uri()}: this store ignores conditional writes ({'If-None-Match' if second else 'If-Match'} "
                "was accepted and the object written anyway), so two writers of one shard could both commit. "
                "Use a store that honours them (AWS S3, MinIO, Cloudflare R2 and moto do), or a local folder.")

    def read_json(self, path: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.read_bytes(path))
        except FileNotFoundError:
            return None

    def glob(self, pattern: str) -> list[str]:
        if self.local:
            # One scandir lists 10^5 markers in a tenth of a second; fsspec's glob asks
            # for each file's details (3.3 s). Like strict_listing, a folder that cannot
            # be read raises; one that does not exist holds nothing.
            folder, name = posixpath.split(pattern)
            return [posixpath.join(folder, n) for n in _local_names(folder, name)]
        # Object-store filesystems cache listings; markers and parts appear while we run.
        self.fs.invalidate_cache(posixpath.dirname(pattern))
        return sorted(retry(lambda: strict_listing(self.fs, "glob", pattern), f"list {pattern}"))

    def delete(self, path: str) -> None:
        path = self.inside(path)
        try:
            retry(lambda: self.fs.rm_file(path), f"delete {path}")
        except FileNotFoundError:
            pass

    def write_json(self, path: str, data: dict[str, Any]) -> None:
        self.write_bytes(path, json_bytes(data))

    # -- job and plan --------------------------------------------------------------

    def read_job(self) -> JobRecord | None:
        data = self.read_json(self.path("job.json"))
        return None if data is None else JobRecord.from_json(data)

    def write_job(self, job: JobRecord) -> None:
        self.write_json(self.path("job.json"), job.to_json())

    def create_job(self, job: JobRecord) -> None:
        """Write `job.json` of a new folder, create-only (PlanConflictError if another run
        made the folder a job meanwhile: a stale driver's late write cannot replace it)."""
        if not self.create_only(self.path("job.json"), json_bytes(job.to_json())):
            raise PlanConflictError(f"{self.uri()}: another run made this folder a job meanwhile; run again")

    def plan_parts(self) -> list[str]:
        return [p for p in self.glob(self.path("_plan", "part-*.parquet")) if _PART_RE.search(p)]

    def read_plan(self, parts: list[str] | None = None) -> pa.Table | None:
        """The plan: its `parts` (as `plan_parts` listed them), or all there are."""
        tables = [self.read_parquet(p) for p in (self.plan_parts() if parts is None else parts)]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def append_plan(self, table: pa.Table, after: list[str] | None = None) -> str:
        """Add a plan part after `after`, the parts the new shards were numbered from
        (default: those there are now), create-only. The part's number follows from the
        plan its writer read, not from a second listing: of two drivers that planned from
        the same plan (a stale one and the run that took its folder over, whenever the
        stale write lands), the second is refused rather than give one shard number to
        different files."""
        parts = self.plan_parts() if after is None else after
        number = int(_PART_RE.search(parts[-1]).group(1)) + 1 if parts else 0
        path = self.path("_plan", f"part-{number:06d}.parquet")
        if not self.create_only(path, parquet_bytes(table)):
            raise PlanConflictError(f"{self.uri()}: plan part {number} was written by another run meanwhile; "
                                    "run again to plan after it")
        return path

    def read_bytes(self, path: str) -> bytes:
        if self.local:
            with open(path, "rb") as f:  # a third of fsspec's time for a small file
                return f.read()
        return retry(lambda: self.fs.cat_file(path, **self._one_request), f"read {path}")

    def read_parquet(self, path: str) -> pa.Table:
        return read_parquet_bytes(self.read_bytes(path))

    # -- shards --------------------------------------------------------------------

    def write_part(self, table_name: str, shard: int, table: pa.Table) -> Part:
        """Write one shard's part of `table_name`; returns what the marker records of it."""
        return self.write_part_bytes(table_name, shard, parquet_bytes(table), table.num_rows)

    def write_part_bytes(self, table_name: str, shard: int, data: bytes, rows: int, *, checked: bool = False) -> Part:
        """Write one shard's part of `table_name` as the Parquet `data` of `rows` rows
        (`checked`: see `Part.checked`)."""
        self.write_bytes(self.part_path(table_name, shard), data)
        return Part(rows=rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), checked=checked,
                    md5=hashlib.md5(data).hexdigest())

    def staged_path(self, table_name: str, shard: int, attempt: str) -> str:
        return self.path("_staged", table_name, f"{shard:06d}-{attempt}.parquet")

    def stage_part(self, table_name: str, shard: int, attempt: str, data: bytes, rows: int, *,
                   checked: bool = False) -> Part:
        """Write one part of attempt `attempt` of `shard` under a name of its own; no reader
        sees it until a marker naming the attempt publishes it (`publish`)."""
        self.write_bytes(self.staged_path(table_name, shard, attempt), data)
        return Part(rows=rows, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), checked=checked,
                    md5=hashlib.md5(data).hexdigest())

    def publish(self, shard: int, attempt: str, parts: dict[str, bytes], *, first: bool = False) -> bool:
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
                     if self.replace_if(self.part_path(t, shard), data, None) is None}
        for tries in range(101):
            if not parts:
                break
            if tries == 100:
                raise RuntimeError(f"shard {shard}: its parts were replaced by others 100 times while this run "
                                   "published them")
            # The versions first, then the marker: a replacement conditional on a version
            # read before the marker was seen naming this attempt.
            versions = {t: self.version(self.part_path(t, shard)) for t in parts}
            parts = {t: data for t, data in parts.items() if versions[t] != digests[t]}
            if not parts:
                break
            marker = self.read_marker(shard)
            if marker is None or marker.staged != attempt:
                logger.warning("shard %06d: its marker names another attempt than %s; not published", shard, attempt)
                return False
            # Each part stays as it is unless another publisher of the shard went first:
            # then look again.
            parts = {t: data for t, data in parts.items()
                     if self.replace_if(self.part_path(t, shard), data, versions[t]) is None}
        for table_name in digests:
            self.delete(self.staged_path(table_name, shard, attempt))
        return True

    def staged(self) -> dict[int, dict[str, set[str]]]:
        """The staged parts there are: {shard: {attempt: {table, ...}}} (one listing per table)."""
        found: dict[int, dict[str, set[str]]] = {}
        for table_name in TABLES:
            for path in self.glob(self.path("_staged", table_name, "*.parquet")):
                match = _STAGED_RE.search(posixpath.basename(path))
                if match:
                    found.setdefault(int(match.group(1)), {}).setdefault(match.group(2), set()).add(table_name)
        return found

    def unpublished(self, among: Iterable[int]) -> dict[int, str]:
        """The shards of `among` (committed ones) whose marker's parts are still staged:
        {shard: attempt}. A commit between its marker and its publication, or one cut
        short there; readers take the staged parts for these (the marker's own bytes).
        One listing per table, and a marker read per shard with staged parts."""
        among = set(among)
        found = {}
        for shard, attempts in self.staged().items():
            if shard in among and (marker := self.read_marker(shard)) is not None:
                if attempts.get(marker.staged) == set(TABLES) and not self._published(shard, marker):
                    found[shard] = marker.staged
        return found

    def _published(self, shard: int, marker: CommitMarker) -> bool:
        """Whether the shard's parts in place are those `marker` records (staged copies
        may outlive their publication: a late write of one landing after it)."""
        return all(marker.parts[t].md5 is not None and self.version(self.part_path(t, shard)) == marker.parts[t].md5
                   for t in TABLES)

    def publish_pending(self) -> tuple[int, int]:
        """Finish what interrupted commits left (called under the lease, before a run's
        own writes): publish the staged parts a marker names but that are not in place
        yet (an attempt stopped between its marker and its parts), and remove staged
        parts no marker names where a marker exists (attempts that lost their commit).
        Staged parts of uncommitted shards stay: a stalled attempt may still commit them.
        Returns (published, removed)."""
        published = removed = 0
        for shard, attempts in sorted(self.staged().items()):
            marker = self.read_marker(shard)
            if marker is None:
                continue
            for attempt, tables in attempts.items():
                if attempt == marker.staged and tables == set(TABLES):
                    published += self.finish_publication(shard, marker)
                    continue
                # Another attempt's (it lost the commit), or what is left of the marker's own
                # once published (the removal of its staged copies was cut short).
                for table_name in tables:
                    self.delete(self.staged_path(table_name, shard, attempt))
                removed += attempt != marker.staged
        return published, removed

    def finish_publication(self, shard: int, marker: CommitMarker) -> bool:
        """Publish the staged parts `marker` names, if they are not in place yet (its
        attempt stopped between marker and parts: an actor killed there, whose shard the
        next attempt finds committed). Whether it published anything."""
        if marker.staged is None or self._published(shard, marker):
            return False
        try:
            blobs = {t: self.read_bytes(self.staged_path(t, shard, marker.staged)) for t in TABLES}
        except FileNotFoundError:  # published meanwhile, and its staged copies removed
            return False
        if any(hashlib.sha256(blobs[t]).hexdigest() != marker.parts[t].sha256 for t in TABLES):
            return False  # not the marker's bytes: left for `verify` to report
        return self.publish(shard, marker.staged, blobs)

    def commit(self, shard: int, marker: CommitMarker) -> bool:
        """Create the marker of `shard`; False if an earlier attempt's is there already."""
        blob = json_bytes(marker.to_json())
        created = self.create_only(self.marker_path(shard), blob)
        if not created:
            logger.info("shard %06d was already committed by an earlier attempt; this one is dropped", shard)
        return created

    def committed(self, among: Iterable[int] | None = None) -> set[int]:
        """The committed shards, or those of `among` only. In an object store `among` is
        found by listing only the key ranges of 1,000 shard numbers (names alike but for
        their last three digits: a listing page each) that hold one of them,
        `PARALLEL_REQUESTS` ranges at once: the pages of one listing come one after
        another, 100 of them for 10^5 markers."""
        if among is None:
            return self.shards_in("_commits", "*.json")
        among = set(among)
        if not among:
            return set()
        if self.local or not _lists_by_prefix(self.fs):
            return self.shards_in("_commits", "*.json") & among
        folder = self.path("_commits")
        prefixes = sorted({f"{shard:06d}"[:-3] for shard in among})  # 000123.json: "000"; 1234567.json: "1234"

        def listed(prefix: str) -> list[str]:
            self.fs.invalidate_cache(folder)
            # No strict_listing: these filesystems list a prefix in one request, and raise.
            return retry(lambda: self.fs.find(folder, prefix=prefix), f"list {folder}/{prefix}*")

        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            paths = [p for found in pool.map(listed, prefixes) for p in found]
        return shard_numbers(posixpath.basename(p) for p in paths) & among

    def etags(self, folder: str) -> dict[str, str] | None:
        """The ETag of every object under `folder` (path: ETag), from a listing (one request
        per 1,000 keys on S3); None where the store gives none (local folders, and
        filesystems whose listings lack them). An object written in one PUT without
        KMS encryption has the MD5 of its bytes as ETag; others have other ETags."""
        if self.local:
            return None
        path = self.path(folder)
        self.fs.invalidate_cache(path)
        found = retry(lambda: strict_listing(self.fs, "find", path, detail=True), f"list {path}")
        tags = {name: info["ETag"].strip('"') for name, info in found.items() if info.get("ETag")}
        return tags if tags or not found else None

    def shards_in(self, folder: str, pattern: str) -> set[int]:
        """The shard numbers of the files in `folder` matching `pattern` (markers, parts, intents)."""
        if self.local:
            names = _local_names(self.path(folder), pattern)
        else:
            names = [posixpath.basename(p) for p in self.glob(self.path(folder, pattern))]
        return shard_numbers(names)

    def read_marker(self, shard: int) -> CommitMarker | None:
        data = self.read_json(self.marker_path(shard))
        return None if data is None else CommitMarker.from_json(data)

    def markers(self) -> list[CommitMarker]:
        """The marker of every committed shard, in shard order: from the marker index for
        the shards it holds, one read each (in parallel) for the others. A folder of 10^5
        shards is then read with its listing and one GET, not 10^5 GETs."""
        return self._markers()[0]

    def _markers(self) -> tuple[list[CommitMarker], dict[int, str | None], bool]:
        """`markers()`, the version of each (`marker_versions`), and whether the index
        differs from them: lacks a committed shard, holds one whose marker is gone, or
        holds a marker other than the one there now (its version differs: a marker
        replaced since, or an index entry a stale writer put there)."""
        versions = self.marker_versions()
        committed = sorted(versions)
        table = self._index_table()
        indexed, indexed_versions = {}, {}
        if table is not None:
            shards = table.column("shard").to_pylist()
            indexed = _parsed(dict(zip(shards, table.column("marker").to_pylist())))
            if "version" in table.column_names:
                indexed_versions = dict(zip(shards, table.column("version").to_pylist()))
        missing = [s for s in committed
                   if s not in indexed or (versions[s] is not None and indexed_versions.get(s) != versions[s])]
        fetched = self._read_markers(missing)
        markers = [m for s in committed if (m := fetched.get(s) or indexed.get(s)) is not None]
        return markers, versions, bool(missing) or len(indexed) != len(committed)

    def marker_versions(self) -> dict[int, str | None]:
        """The committed shards, each with a tag of its marker's version from the listing
        alone: the ETag on an object store (None where listings give none), locally
        the file's inode, modification time and size (a marker is replaced by a rename,
        never rewritten in place)."""
        folder = self.path("_commits")
        if self.local:
            try:
                with os.scandir(folder) as entries:
                    found = {e.name: e.stat() for e in entries if not e.name.startswith(".") and e.name.endswith(".json")}
            except FileNotFoundError:
                return {}
            return {int(m.group(1)): f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"
                    for name, st in found.items() if (m := _SHARD_FILE_RE.search(name))}
        self.fs.invalidate_cache(folder)
        listed = retry(lambda: strict_listing(self.fs, "find", folder, detail=True), f"list {folder}")
        versions = {}
        for name, info in listed.items():
            if (m := _SHARD_FILE_RE.search(posixpath.basename(name))) and name.endswith(".json"):
                tag = info.get("ETag")
                versions[int(m.group(1))] = tag.strip('"') if tag else None
        return versions

    def reported_markers(self, planned: Iterable[int]) -> list[CommitMarker]:
        """The markers of the `planned` shards for a report (`status`), read cheaply: the
        index's, and those of the shards it lacks, found by listing only their key ranges.
        A finished job's folder is then read with the index alone (`markers()` lists all
        10^5 markers of one). Runs write the index from the markers and `retry-failed`
        takes a shard out of it before replacing its marker, so the two agree unless a
        marker was deleted by hand: such a shard counts here until the next run rewrites
        the index, and `verify` (which lists every marker) reports it."""
        indexed = self.indexed_markers()
        planned = set(planned)
        lacking = sorted(self.committed(among=planned - indexed.keys()))
        fetched = self._read_markers(lacking)
        return [m for s in sorted(planned) if (m := indexed.get(s) or fetched.get(s)) is not None]

    def _read_markers(self, shards: list[int]) -> dict[int, CommitMarker | None]:
        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            return dict(zip(shards, pool.map(self.read_marker, shards)))

    # -- marker index --------------------------------------------------------------

    def index_path(self) -> str:
        return self.path("_index", "markers.parquet")

    def indexed_markers(self) -> dict[int, CommitMarker]:
        """The markers `_index/markers.parquet` holds. A cache written by the run holding
        the lease: markers stay the truth (a shard without a marker is not committed,
        whatever the index says), and a run that writes a shard's marker again (`retry-failed`,
        or a run after a marker was deleted) takes the shard out of the index first
        (`unindex`), so an entry is never older than its marker."""
        return _parsed(self.index_entries())

    def index_entries(self) -> dict[int, str]:
        """The index as it is stored: each shard's marker as JSON text (parsing 10^5 of
        them takes seconds: `verify` leaves it to its workers)."""
        table = self._index_table()
        if table is None:
            return {}
        return dict(zip(table.column("shard").to_pylist(), table.column("marker").to_pylist()))

    def _index_table(self) -> pa.Table | None:
        try:
            return self.read_parquet(self.index_path())
        except FileNotFoundError:
            return None

    def update_index(self, before_write: Callable[[], None] = lambda: None) -> list[CommitMarker]:
        """Every committed shard's marker (`markers()`); the index is written again only if
        it differs from them (an entry missing, extra or of another version of its
        marker), after `before_write` (the lease check) has passed. A rerun that finds
        every marker indexed writes nothing. The write is conditional on the index read:
        one that lands after another run's (a stale driver's) is refused, and the index
        is read and compared again."""
        for _ in range(5):
            index_version = self.version(self.index_path())
            markers, versions, stale = self._markers()
            if not stale:
                return markers
            before_write()
            if self.write_index(markers, versions, expected=index_version):
                return markers
            logger.info("the marker index was written by another run meanwhile; reading it again")
        raise PlanConflictError(f"{self.uri()}: the marker index kept changing while this run wrote it")

    def write_index(self, markers: list[CommitMarker], versions: dict[int, str | None] | None = None, *,
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
            self.write_bytes(self.index_path(), parquet_bytes(table))
            return True
        return self.replace_if(self.index_path(), parquet_bytes(table), expected) is not None

    def unindex(self, shards: Iterable[int]) -> None:
        """Take `shards` out of the index before their markers are replaced (`retry-failed`)
        or written anew (a shard whose marker was deleted runs again); conditional on the
        index read, like `update_index`."""
        shards = pa.array(list(shards), pa.int32())
        for _ in range(5):
            version = self.version(self.index_path())
            table = self._index_table()
            if table is None:
                return
            kept = table.filter(pc.invert(pc.is_in(table.column("shard"), shards)))
            if kept.num_rows == table.num_rows or self.replace_if(self.index_path(), parquet_bytes(kept), version):
                return
        raise PlanConflictError(f"{self.uri()}: the marker index kept changing while this run wrote it")

    def next_attempt(self, shard: int, by: dict[str, Any] | None = None) -> int:
        """Count one more start of `shard` and return its number (1 for the first).

        `by` (the node and process of the attempt) is recorded beside the count.
        """
        path = self.path("_attempts", f"{shard:06d}.json")
        previous = (self.read_json(path) or {}).get("attempts", 0)
        self.write_json(path, {"attempts": previous + 1, **(by or {})})
        return previous + 1

    # -- runs ----------------------------------------------------------------------

    def write_run(self, record: RunRecord) -> None:
        name = f"{record.started_at.replace(':', '').replace('-', '')}-{uuid.uuid4().hex[:8]}.json"
        self.write_json(self.path("_runs", name), record.to_json())

    def runs(self) -> list[RunRecord]:
        return [RunRecord.from_json(r) for p in self.glob(self.path("_runs", "*.json")) if (r := self.read_json(p))]


def json_bytes(data: dict[str, Any]) -> bytes:
    """The bytes of a JSON record (`job.json`, a marker): the same data, the same bytes."""
    return json.dumps(data, indent=2, sort_keys=True).encode()


def shard_numbers(names: Iterable[str]) -> set[int]:
    """The shard numbers in file names (000042.json, part-000042.parquet); others are skipped."""
    return {int(m.group(1)) for name in names if (m := _SHARD_FILE_RE.search(name))}


def _local_names(folder: str, pattern: str) -> list[str]:
    """The names in local `folder` matching `pattern`, sorted, hidden ones left out; none
    if the folder does not exist, and an error if it cannot be read."""
    match = re.compile(fnmatch.translate(pattern)).match
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and match(e.name))
    except FileNotFoundError:
        return []


def _lists_by_prefix(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs.find` takes `prefix` (s3fs, gcsfs: a listing of the keys that start so)."""
    return "prefix" in inspect.signature(fs.find).parameters


def strict_listing(fs: fsspec.AbstractFileSystem, method: str, path: str, **kwargs):
    """`fs.glob` or `fs.find` that raises when a listing fails.

    fsspec's walk, under both, omits a folder whose listing fails unless told to raise:
    one transient error would silently hide files (from the plan) or commit markers
    (from a resume). Filesystems with their own listing (s3fs lists a whole prefix in
    one request) take no `on_error` and raise anyway.
    """
    try:
        return getattr(fs, method)(path, on_error="raise", **kwargs)
    except FileNotFoundError:
        return {} if kwargs.get("detail") else []  # no such folder: nothing matches
    except TypeError as exc:
        if "on_error" not in str(exc):
            raise
        return getattr(fs, method)(path, **kwargs)


def _parsed(entries: dict[int, str]) -> dict[int, CommitMarker]:
    """The markers of index entries (each a marker's JSON text)."""
    return {shard: CommitMarker.from_json(json.loads(blob)) for shard, blob in entries.items()}


def _refused(exc: BaseException) -> bool:
    """Whether a conditional write was refused: 412 Precondition Failed (s3fs raises
    FileExistsError for `If-None-Match`, an OSError for `If-Match`), or 404 for an
    `If-Match` on an object that is gone."""
    return (isinstance(exc, (FileExistsError, FileNotFoundError)) or status_of(exc) in (404, 412)
            or error_code(exc) in ("PreconditionFailed", "NoSuchKey"))


def _replace_with(path: str, data: bytes) -> None:
    """Locally: `data` written beside `path`, fsynced, renamed over it, the rename made durable."""
    tmp = _write_temp_beside(path, data)
    try:
        os.replace(tmp, path)
        _fsync_folder(os.path.dirname(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_folder(folder: str) -> None:
    """Make a rename or link in `folder` durable (POSIX: the folder's entry, not the file)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp_beside(path: str, data: bytes) -> str:
    """Write `data` durably to a hidden temporary file next to `path`; return its name.

    The name ends in `.tmp`, so globs over `*.parquet` or `*.json` never match it.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp

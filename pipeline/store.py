"""The output folder: its layout, and the atomic, create-only and conditional writes that
every record in it goes through.

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

What is written where: `ledger` (job, plan, runs, attempts), `publish` (staged and
published parts), `markers` (commit markers), `index` (the marker index).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import posixpath
import re
import uuid
from typing import Any, Iterable

import fsspec
import pyarrow as pa

from pipeline.listing import local_names, strict_listing
from pipeline.localdisk import fsync_folder, locked, remove_temporaries, replace_with, write_temp_beside
from pipeline.parquet import read_parquet_bytes
from pipeline.retry import error_code, retry, status_of

logger = logging.getLogger(__name__)

TABLES = ("segments", "files")
# Storage requests made at once where many small objects are read or stat'ed (object
# stores answer each in tens of ms): markers the index lacks, sizes of manifest rows.
PARALLEL_REQUESTS = 16
SHARD_FILE_RE = re.compile(r"(\d{6,})\.(?:json|parquet)$")  # 000042.json, part-000042.parquet


class PlanConflictError(RuntimeError):
    """Another run wrote a plan part at the same time."""


class UnsafeStoreError(RuntimeError):
    """The store does not honour conditional writes: two writers could both "win"."""


# The folders of an output folder (README, "Output layout").
FOLDERS = (*TABLES, "_commits", "_staged", "_plan", "_index", "_retry", "_runs", "_attempts", "_probe")


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
        nested = [posixpath.join(outer, table) for outer in ("_staged", "_index") for table in TABLES]
        return remove_temporaries([self.path(name) if name else self.root for name in ("", *FOLDERS, *nested)],
                                  self.inside)

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
        replace_with(path, data)

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
        tmp = write_temp_beside(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        fsync_folder(os.path.dirname(path))
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
            with locked(self.root, self.inside(self.path(".lock"))):
                current = self.version(path)
                if current != expected:
                    return digest if current == digest else None
                replace_with(path, data)
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
            with locked(self.root, self.inside(self.path(".lock"))):
                current = self.version(path)
                if current is None:
                    return True
                if current != expected:
                    return False
                os.unlink(path)
                fsync_folder(os.path.dirname(path))
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
            return [posixpath.join(folder, n) for n in local_names(folder, name)]
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

    def read_bytes(self, path: str) -> bytes:
        if self.local:
            with open(path, "rb") as f:  # a third of fsspec's time for a small file
                return f.read()
        return retry(lambda: self.fs.cat_file(path, **self._one_request), f"read {path}")

    def read_parquet(self, path: str) -> pa.Table:
        return read_parquet_bytes(self.read_bytes(path))

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
            names = local_names(self.path(folder), pattern)
        else:
            names = [posixpath.basename(p) for p in self.glob(self.path(folder, pattern))]
        return shard_numbers(names)




def json_bytes(data: dict[str, Any]) -> bytes:
    """The bytes of a JSON record (`job.json`, a marker): the same data, the same bytes."""
    return json.dumps(data, indent=2, sort_keys=True).encode()


def shard_numbers(names: Iterable[str]) -> set[int]:
    """The shard numbers in file names (000042.json, part-000042.parquet); others are skipped."""
    return {int(m.group(1)) for name in names if (m := SHARD_FILE_RE.search(name))}


def _refused(exc: BaseException) -> bool:
    """Whether a conditional write was refused: 412 Precondition Failed (s3fs raises
    FileExistsError for `If-None-Match`, an OSError for `If-Match`), or 404 for an
    `If-Match` on an object that is gone."""
    return (isinstance(exc, (FileExistsError, FileNotFoundError)) or status_of(exc) in (404, 412)
            or error_code(exc) in ("PreconditionFailed", "NoSuchKey"))

"""Expand what the user named (folders, globs, URLs, manifest files) into work units.

Everything is reached through fsspec, so local paths, `s3://`, `gs://`, `memory://`
and chained URLs go through the same code. A unit is one audio source
`(uri, start_s, end_s)` with a stable `unit_id`; manifest columns other than the
URI ride along unchanged and end up in the `files` table.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable
from urllib.parse import quote

import fsspec
import pyarrow as pa

from pipeline.listing import strict_listing
from pipeline.retry import retry
from pipeline.schema import RESERVED_COLUMNS, UNIT_SCHEMA
from pipeline.store import PARALLEL_REQUESTS

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .mp3 .m4a .aac .ogg .oga .opus .wma .aif .aiff .aifc .amr .ac3 .caf "
    ".au .ape .wv .mka .spx .mp4 .m4v .mov .mkv .webm .avi .wmv .flv .mpg .mpeg .ts .3gp".split()
)
MANIFEST_EXTENSIONS = frozenset({".csv", ".jsonl", ".parquet", ".txt"})
URI_COLUMNS = ("uri", "path")
# A manifest column of file sizes in bytes: rows that have one are not stat'ed.
SIZE_COLUMN = "size_bytes"
# A manifest column of durations in seconds: files that have one are not probed when
# long files are planned as windows, and shards are balanced by it.
DURATION_COLUMN = "duration_s"
_GLOB_CHARS = frozenset("*?[")


# Rough bytes per second of audio, by container: only used to balance shards.
_BYTES_PER_S = {
    ".wav": 32_000, ".wave": 32_000, ".aif": 88_200, ".aiff": 88_200, ".aifc": 88_200, ".au": 32_000,
    ".flac": 20_000, ".ape": 20_000, ".wv": 20_000, ".caf": 32_000,
}
_COMPRESSED_BYTES_PER_S = 16_000  # 128 kbit/s, typical of mp3, aac, ogg; video is larger still
_UNKNOWN_SIZE_S = 60.0


def estimate_audio_s(uri: str, size_bytes: int | None) -> float:
    """A guess of a file's audio length from its size and extension."""
    if size_bytes is None:
        return _UNKNOWN_SIZE_S
    rate = _BYTES_PER_S.get(posixpath.splitext(uri)[1].lower(), _COMPRESSED_BYTES_PER_S)
    return size_bytes / rate


class InputError(ValueError):
    """An input names nothing, or a manifest is malformed."""


def unit_id(uri: str, start_s: float = 0.0, end_s: float | None = None, channel: int | None = None) -> str:
    """A stable id for the window `[start_s, end_s)` of `uri` (of one `channel` of it, or
    all mixed down): the same input, the same id."""
    key = f"{uri}\x00{start_s:.3f}\x00{'' if end_s is None else f'{end_s:.3f}'}"
    if channel is not None:
        key += f"\x00channel {channel}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def canonical_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Local files as absolute paths, everything else as a full URL (`s3://b/k`).

    A local name that is not valid UTF-8 cannot be a Parquet string: it becomes a
    `file://` URL with its bytes percent-encoded, which `audio.local_path` reverses.
    """
    if not _is_local(fs):
        return fs.unstrip_protocol(path)
    local = os.path.abspath(fs._strip_protocol(path))
    try:
        local.encode("utf-8")
        return local
    except UnicodeEncodeError:
        return "file://" + quote(os.fsencode(local), safe="/")


def expand(inputs: Iterable[str], storage_options: dict[str, Any] | None = None) -> pa.Table:
    """All units the inputs name, deduplicated and sorted by (uri, start_s).

    Args:
        inputs: folders (walked recursively for audio and video files), globs, single
            files or URLs, and manifest files (.csv, .jsonl, .parquet, .txt).
        storage_options: passed to fsspec for every URL.

    Returns:
        A table with UNIT_SCHEMA's columns first, then any manifest columns.

    Raises:
        InputError: an input matches nothing, or a manifest is malformed.
    """
    storage_options = storage_options or {}
    tables = []
    for item in inputs:
        fs, path = fsspec.core.url_to_fs(item, **storage_options)
        if _ext(path) in MANIFEST_EXTENSIONS and _kind(fs, path) == "file":
            tables.append(_read_manifest(fs, path))
        else:
            files = _list_audio(fs, path, item)
            tables.append(_units_table([canonical_uri(fs, p) for p in files], list(files.values())))
        # Object-store filesystems keep every listing they made (10^6 keys: about a GB of
        # the driver's memory for the whole run); the plan has what it needs from them.
        fs.invalidate_cache()
    table = pa.concat_tables(tables, promote_options="permissive")
    return _dedupe_sorted(table)


def absolute(inputs: Iterable[str]) -> tuple[str, ...]:
    """The inputs with local paths made absolute, URLs as given: how a folder records
    them, so that a rerun knows the same folder named another way (`audio`, `./audio/`,
    `$PWD/audio`), and the same name given in another directory is another folder."""
    return tuple(item if "://" in item else os.path.abspath(item) for item in inputs)


def local_paths_exist(inputs: Iterable[str]) -> bool:
    """Whether every input that is a plain local path (no URL, no glob) is there: a
    cheap look before a listing that may take long (a mistyped path fails at once)."""
    return all(os.path.exists(item) for item in inputs
               if "://" not in item and not _GLOB_CHARS.intersection(item))


def _kind(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """'file', 'directory', or None if nothing is there (transient errors are retried;
    fsspec's isdir/isfile would read them as "not there")."""
    try:
        return retry(lambda: fs.info(path), f"stat {path}")["type"]
    except FileNotFoundError:
        return None


def _find(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict]:
    return retry(lambda: strict_listing(fs, "find", path, detail=True), f"list {path}")


def _list_audio(fs: fsspec.AbstractFileSystem, path: str, given: str) -> dict[str, int | None]:
    """Map each audio file below `path` (a folder, a glob or a file) to its size."""
    kind = _kind(fs, path)
    if kind == "directory":
        found = _find(fs, path)
    elif kind == "file":
        # A file named explicitly is taken whatever its extension.
        return {path: retry(lambda: fs.size(path), f"stat {path}")}
    elif _GLOB_CHARS & set(path):
        found = {}
        for match, info in retry(lambda: strict_listing(fs, "glob", path, detail=True), f"list {path}").items():
            found.update(_find(fs, match) if info["type"] == "directory" else {match: info})
    else:
        raise InputError(f"no such file or folder: {given}")
    files = {
        p: info.get("size")
        for p, info in found.items()
        if info.get("type") != "directory"
        and _ext(p) in AUDIO_EXTENSIONS
        and not posixpath.basename(p).startswith(".")
    }
    if not files:
        logger.warning("no audio or video files in %s", given)
    return files


def _units_table(uris: list[str], sizes: list[int | None], durations: list[float | None] | None = None) -> pa.Table:
    """Whole-file units for `uris` (canonical), with their sizes (and durations, if known)."""
    return pa.table(
        {
            "unit_id": [unit_id(u) for u in uris],
            "uri": uris,
            "size_bytes": sizes,
            "start_s": [0.0] * len(uris),
            "end_s": [None] * len(uris),
            "duration_s": durations or [None] * len(uris),
        },
        schema=UNIT_SCHEMA,
    )


def _read_manifest(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    ext = _ext(path)
    with io.BytesIO(retry(lambda: fs.cat_file(path), f"read {path}")) as f:
        if ext == ".csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(f)
        elif ext == ".jsonl":
            import pyarrow.json as pajson

            table = pajson.read_json(f)
        elif ext == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(f)
        else:
            lines = [ln.strip() for ln in f.read().decode("utf-8").splitlines()]
            table = pa.table({"uri": [ln for ln in lines if ln and not ln.startswith("#")]})
    column = next((c for c in URI_COLUMNS if c in table.column_names), None)
    if column is None:
        raise InputError(
            f"manifest {canonical_uri(fs, path)} has no 'uri' or 'path' column "
            f"(columns: {', '.join(table.column_names) or 'none'})"
        )
    raw = table.column(column).to_pylist()
    if any(not isinstance(v, str) or not v.strip() for v in raw):
        bad = next(i for i, v in enumerate(raw) if not isinstance(v, str) or not v.strip())
        raise InputError(f"manifest {canonical_uri(fs, path)}: row {bad + 1} has an empty {column!r}")
    base = posixpath.dirname(path)
    targets = [_manifest_target(fs, base, v.strip()) for v in raw]
    # Sizes the manifest gives are taken as they are: on an object store each other row
    # costs a HEAD request (99 s for 10^4 S3 URLs, measured on a loopback server).
    given = ([None if v is None else int(v) for v in table.column(SIZE_COLUMN).to_pylist()]
             if SIZE_COLUMN in table.column_names else [None] * len(targets))
    unknown = [i for i, size in enumerate(given) if size is None]
    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        for i, size in zip(unknown, pool.map(_size_or_none, [targets[i] for i in unknown])):
            given[i] = size
    units = _units_table([uri for _, _, uri in targets], given, _durations(table, canonical_uri(fs, path)))
    for name in table.column_names:
        if name in (column, SIZE_COLUMN, DURATION_COLUMN):
            continue
        out_name = f"manifest_{name}" if name in RESERVED_COLUMNS else name
        if out_name != name:
            logger.warning("manifest column %r is a reserved name; it is kept as %r", name, out_name)
        units = units.append_column(out_name, table.column(name))
    return units


def _durations(table: pa.Table, manifest: str) -> list[float | None] | None:
    if DURATION_COLUMN not in table.column_names:
        return None
    try:
        found = [None if v is None else float(v) for v in table.column(DURATION_COLUMN).to_pylist()]
    except (TypeError, ValueError) as exc:
        raise InputError(f"manifest {manifest}: {DURATION_COLUMN} must hold seconds ({exc})") from None
    bad = next((i for i, v in enumerate(found) if v is not None and not (v >= 0 and math.isfinite(v))), None)
    if bad is not None:
        raise InputError(f"manifest {manifest}: row {bad + 1} has {DURATION_COLUMN} {found[bad]!r}")
    return found


def _manifest_target(fs: fsspec.AbstractFileSystem, base: str, value: str):
    """(filesystem, path, canonical uri) of a manifest entry; relative ones sit beside the manifest."""
    if "://" in value or value.startswith("/"):
        target_fs, target_path = fsspec.core.url_to_fs(value, **getattr(fs, "storage_options", {}))
        if "://" not in value:
            target_fs = fs if _is_local(fs) else target_fs
    else:
        target_fs, target_path = fs, posixpath.normpath(posixpath.join(base, value))
    return target_fs, target_path, canonical_uri(target_fs, target_path)


def _size_or_none(target) -> int | None:
    # A missing entry is not an error here: it becomes a `failed` row when its shard runs.
    # So is a local file the system will not stat (a symbolic link loop).
    fs, path, _ = target
    try:
        return retry(lambda: fs.size(path), f"stat {path}")
    except (FileNotFoundError, PermissionError):
        return None
    except OSError:
        if not _is_local(fs):
            raise
        return None


def _dedupe_sorted(table: pa.Table) -> pa.Table:
    ids = table.column("unit_id").to_pylist()
    first: dict[str, int] = {}
    for i, uid in enumerate(ids):
        first.setdefault(uid, i)
    if len(first) < len(ids):
        logger.warning("%d duplicate input(s) dropped (the same uri named twice)", len(ids) - len(first))
        table = table.take(sorted(first.values()))
    return table.sort_by([("uri", "ascending"), ("start_s", "ascending")])

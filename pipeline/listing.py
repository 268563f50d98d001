"""Listings that never hide a file: what the plan lists of the inputs and what a
resume lists of the output folder go through here."""

from __future__ import annotations

import fnmatch
import inspect
import os
import re

import fsspec


def local_names(folder: str, pattern: str) -> list[str]:
    """The names in local `folder` matching `pattern`, sorted, hidden ones left out; none
    if the folder does not exist, and an error if it cannot be read."""
    match = re.compile(fnmatch.translate(pattern)).match
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and match(e.name))
    except FileNotFoundError:
        return []


def lists_by_prefix(fs: fsspec.AbstractFileSystem) -> bool:
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

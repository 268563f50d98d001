"""Durable writes to a local disk: a file written beside its name, fsynced, then renamed
or linked into place with the rename made durable; and the folder's lock file, held for
one compare and write. Object stores need none of it (a PUT is atomic)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from typing import Callable

# Seconds a local writer waits for the folder's lock file (held for one compare and rename).
LOCK_WAIT_S = 120.0


@contextlib.contextmanager
def locked(folder: str, lock_path: str):
    """The lock file `lock_path` of `folder` (`OUT/.lock`), held for one compare and write."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock_path} was held for {LOCK_WAIT_S:.0f}s by another process")
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_with(path: str, data: bytes) -> None:
    """Locally: `data` written beside `path`, fsynced, renamed over it, the rename made durable."""
    tmp = write_temp_beside(path, data)
    try:
        os.replace(tmp, path)
        fsync_folder(os.path.dirname(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_folder(folder: str) -> None:
    """Make a rename or link in `folder` durable (POSIX: the folder's entry, not the file)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp_beside(path: str, data: bytes) -> str:
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


def remove_temporaries(folders: list[str], checked: Callable[[str], str]) -> int:
    """Remove the hidden temporary files (`.NAME.HEX.tmp`) in `folders` that writes left
    behind when they failed or were killed, each path passed through `checked` (which
    raises for a path outside the output folder) first. Returns how many."""
    removed = 0
    for folder in folders:
        try:
            entries = [e.path for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for path in entries:
            try:
                os.unlink(checked(path))
                removed += 1
            except FileNotFoundError:
                pass
    return removed

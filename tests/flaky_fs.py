"""A local filesystem that fails like a struggling object store, for the fault tests.

`flaky:///path` is the local `/path`, except that every FLAKY_EVERY-th storage call
(default 3: a third of them) raises one of the transient errors real object stores
raise: a timeout, a connection reset, an HTTP 503 "Slow Down". Failures never come
twice in a row, so narrow retries always get through. A path containing `forbidden`
raises PermissionError, a permanent error that must not be retried.
"""

from __future__ import annotations

import itertools
import os
import threading

import fsspec
from fsspec.implementations.local import LocalFileSystem


class SlowDown(OSError):
    """What s3fs raises for HTTP 503 (with the status attached)."""

    status = 503


_ERRORS = (
    lambda: TimeoutError("read timed out"),
    lambda: ConnectionResetError(104, "Connection reset by peer"),
    lambda: SlowDown("503 Slow Down: please reduce your request rate"),
)


class FlakyFileSystem(LocalFileSystem):
    protocol = ("flaky",)
    root_marker = "/"
    _lock = threading.Lock()
    _calls = itertools.count(1)
    failures = 0

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        if path.startswith("flaky://"):
            path = path[len("flaky://"):]
        return LocalFileSystem._strip_protocol(path)

    def unstrip_protocol(self, name):
        return "flaky://" + self._strip_protocol(name)

    _local = threading.local()

    def _fault(self, path) -> None:
        if getattr(self._local, "inner", False):
            return  # one request to a store fails or not as a whole: calls inside it never do
        if "forbidden" in str(path):
            raise PermissionError(13, "Access Denied", str(path))  # listed, but not readable
        every = int(os.environ.get("FLAKY_EVERY", "3"))
        with self._lock:
            n = next(self._calls)
        if every and n % every == 0:
            FlakyFileSystem.failures += 1
            raise _ERRORS[n % len(_ERRORS)]()

    def _open(self, path, mode="rb", **kwargs):
        self._fault(path)
        return super()._open(path, mode=mode, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._fault(path)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._fault(path)
        self.makedirs(self._parent(path), exist_ok=True)
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def info(self, path, **kwargs):
        self._fault(path)
        return super().info(path, **kwargs)

    def ls(self, path, detail=False, **kwargs):
        self._fault(path)
        self._local.inner = True
        try:
            return super().ls(path, detail=detail, **kwargs)
        finally:
            self._local.inner = False


def register() -> None:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)

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


_inner = threading.local()


def _request(method):
    """One request to a store fails or succeeds as a whole: only the outermost call may
    fault, and the calls it makes inside (ls stats each entry, pipe_file opens) never do."""

    def call(self, path, *args, **kwargs):
        if getattr(_inner, "active", False):
            return method(self, path, *args, **kwargs)
        self._fault(path)
        _inner.active = True
        try:
            return method(self, path, *args, **kwargs)
        finally:
            _inner.active = False

    return call


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

    def _fault(self, path) -> None:
        if "forbidden" in str(path):
            raise PermissionError(13, "Access Denied", str(path))  # listed, but not readable
        every = int(os.environ.get("FLAKY_EVERY", "3"))
        with self._lock:
            n = next(self._calls)
        if every and n % every == 0:
            FlakyFileSystem.failures += 1
            raise _ERRORS[n % len(_ERRORS)]()

    _open = _request(LocalFileSystem._open)
    cat_file = _request(LocalFileSystem.cat_file)
    info = _request(LocalFileSystem.info)
    ls = _request(LocalFileSystem.ls)

    @_request
    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self.makedirs(self._parent(path), exist_ok=True)
        return LocalFileSystem.pipe_file(self, path, value, mode=mode, **kwargs)


def register() -> None:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)

"""Which storage errors are retried, and how often."""

from __future__ import annotations

import errno

import pytest

from pipeline import retry as retry_module
from pipeline.retry import is_transient, retry


class _HttpError(Exception):
    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


class _ClientError(Exception):
    """botocore's shape: the status inside `response`."""

    def __init__(self, status: int):
        super().__init__(f"client error {status}")
        self.response = {"ResponseMetadata": {"HTTPStatusCode": status}}


@pytest.mark.parametrize("exc", [
    TimeoutError("read timed out"),
    ConnectionResetError("reset by peer"),
    OSError(errno.ETIMEDOUT, "timed out"),
    OSError(errno.ECONNREFUSED, "refused"),
    _HttpError(503),
    _HttpError(429),
    _ClientError(500),
    _ClientError(408),
])
def test_transient_errors_are_retried(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    FileNotFoundError("no such key"),
    PermissionError("access denied"),
    FileExistsError("exists"),
    _HttpError(404),
    _HttpError(403),
    _ClientError(400),
    OSError(errno.ENOSPC, "no space left"),
    ValueError("a bug, not the storage"),
])
def test_permanent_errors_are_not(exc):
    assert not is_transient(exc)


def test_retry_gives_up_after_its_attempts_and_never_retries_a_permanent_error(monkeypatch):
    waits = []
    monkeypatch.setattr(retry_module.time, "sleep", waits.append)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _HttpError(503)
        return "done"

    assert retry(flaky, "flaky") == "done" and len(calls) == 3 and len(waits) == 2
    assert all(0 <= w <= retry_module.MAX_DELAY_S for w in waits)

    calls.clear()
    with pytest.raises(_HttpError):
        retry(lambda: calls.append(1) or (_ for _ in ()).throw(_HttpError(503)), "down", attempts=4)
    assert len(calls) == 4

    calls.clear()
    with pytest.raises(FileNotFoundError):
        retry(lambda: calls.append(1) or (_ for _ in ()).throw(FileNotFoundError("gone")), "missing")
    assert len(calls) == 1

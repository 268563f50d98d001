"""Narrow retries for storage calls: transient errors only, capped exponential backoff, jitter.

What object stores raise when they are briefly unwell (timeouts, connection resets,
HTTP 429/500/502/503/504) is retried; what will not change on a retry (not found,
permission denied, a bad request) is re-raised at once.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 6
BASE_DELAY_S = 0.2
MAX_DELAY_S = 8.0

_TRANSIENT_ERRNOS = {
    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.EPIPE,
    errno.EAGAIN, errno.EBUSY, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
}
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an fsspec backend attached to `exc` or to the error it translated
    (s3fs raises an OSError whose cause is botocore's ClientError), if any."""
    while exc is not None:
        for attr in ("status", "status_code", "code"):
            value = getattr(exc, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
        response = getattr(exc, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(value, int):
                return value
        exc = exc.__cause__
    return None


def error_code(exc: BaseException) -> str | None:
    """The S3 error code ("PreconditionFailed", "ConditionalRequestConflict") behind `exc`."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return response["Error"]["Code"]
        exc = exc.__cause__
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = status_of(exc)
    if status == 409 and error_code(exc) == "ConditionalRequestConflict":
        # S3: a conditional write met another write of the key in flight; AWS says to
        # retry it (s3fs maps it to no exception of its own: an OSError(EIO)).
        return True
    if status is not None:
        return status in _TRANSIENT_STATUS
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return False


def retry(fn: Callable[[], T], what: str, *, attempts: int = ATTEMPTS) -> T:
    """Call `fn`; on a transient error wait (full jitter, capped) and call it again.

    Args:
        fn: the storage call, without arguments.
        what: a short description for the log ("write segments part 42").
        attempts: calls in all before the last error is re-raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # classified below; anything not transient re-raises at once
            if attempt == attempts or not is_transient(exc):
                raise
            delay = random.uniform(0, min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (attempt - 1)))
            logger.warning("%s: %s (%s); retry %d/%d in %.2fs", what, type(exc).__name__, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")

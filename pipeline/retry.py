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


def _status(exc: BaseException) -> int | None:
    """The HTTP status an fsspec backend attached to `exc`, if any (s3fs, gcsfs, aiohttp)."""
    for attr in ("status", "status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(value, int):
            return value
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    status = _status(exc)
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

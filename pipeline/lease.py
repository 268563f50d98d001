"""One writer per output folder: a lease file with a heartbeat.

A run creates `OUT/_lease.json` create-only and rewrites its `heartbeat_at` every
HEARTBEAT_S seconds from a background thread. A second run that finds a live lease
is refused with a message naming the holder. A lease is stale, and may be taken over,
when its record has not changed for TTL_S by the taker's own clock (a lease whose
heartbeat looks older than TTL_S is watched that long first: the holder's clock may be
behind), or at once when its holder ran in this very process namespace of this host
(same host name, boot and PID namespace) and that process is gone (a killed run must
not block its own resume; two containers with one host name see each other's pids as
dead).

Every write of the lease is conditional on the version its writer last saw
(`OutputStore.replace_if` and `delete_if`: `If-Match` on S3, a compare under the folder's
lock file locally): a heartbeat or a release that stalled past a takeover is refused by
the store when it lands, so it can neither bring the old holder back nor delete the new
holder's lease, and two takers of one stale lease cannot both win.

A run whose lease was taken over (its heartbeat stalled past TTL_S: a frozen or
partitioned driver) stops: its next heartbeat is refused, the driver checks
`Lease.check()` before each of its writes, and its actors check `holds()` before a
shard's writes; what it may still have in flight is refused by the fencing of the
writes themselves (`pipeline.store`, `pipeline.commit`). Every commit marker records
the holder it was written under.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from pipeline.store import OutputStore

logger = logging.getLogger(__name__)

TTL_S = float(os.environ.get("BULKSCRIBE_LEASE_TTL_S", 120))
HEARTBEAT_S = TTL_S / 6


class LeaseHeldError(RuntimeError):
    """Another live run holds the output folder."""


class LeaseLostError(RuntimeError):
    """This run's lease was taken over by another run: it stops before its next write."""


class Lease:
    """Hold `OUT/_lease.json` for the life of a `with` block."""

    def __init__(self, store: OutputStore, purpose: str = "run"):
        self.store = store
        self.path = lease_path(store)
        self.owner = uuid.uuid4().hex
        self.purpose = purpose
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        # The version (OutputStore.version) of the record this holder last wrote.
        self._version: str | None = None

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {
            "owner": self.owner,
            "purpose": self.purpose,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "processes": process_namespace(),
            "heartbeat_at": now,
            "heartbeat_iso": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        }

    def acquire(self) -> None:
        data = json.dumps(self._record()).encode()
        for _ in range(3):
            if self.store.create_only(self.path, data):
                self._version = self.store.version(self.path)
                return self._start_heartbeat()
            version = self.store.version(self.path)
            held = read_lease(self.store)
            if held is None or version is None:
                continue  # released meanwhile: create it again
            reason = stale_reason(held)
            if reason is not None and not reason.endswith("is gone"):
                reason = self._unchanged(held, reason)
            if reason is None:
                age = time.time() - held.get("heartbeat_at", 0)
                raise LeaseHeldError(
                    f"{self.store.uri()} is in use by another bulkscribe {held.get('purpose', 'run')} "
                    f"(host {held.get('host')}, pid {held.get('pid')}, last heartbeat {age:.0f}s ago). "
                    f"Wait for it to finish; a lease without a heartbeat for {TTL_S:.0f}s is taken over."
                )
            if reason == "released":
                continue
            logger.warning("taking over the lease of %s: %s", self.store.uri(), reason)
            # Conditional on the record watched: of two takers, or a taker and a holder
            # whose heartbeat lands now, one wins.
            self._version = self.store.replace_if(self.path, data, version)
            if self._version is None:
                break
            return self._start_heartbeat()
        raise LeaseHeldError(f"{self.store.uri()} was just taken by another run")

    def _unchanged(self, held: dict[str, Any], reason: str) -> str | None:
        """`reason`, once the lease `held` stayed as it is for TTL_S on this clock; None as
        soon as it changes (its holder beats: alive, whatever its clock says)."""
        logger.info("the lease of %s looks stale (%s); watching it for %.0fs before taking it over",
                    self.store.uri(), reason, TTL_S)
        deadline = time.monotonic() + TTL_S
        while time.monotonic() < deadline:
            time.sleep(min(1.0, HEARTBEAT_S / 4))
            now = read_lease(self.store)
            if now is None:
                return "released"
            if now != held:
                return None
        return f"{reason}, and no change in {TTL_S:.0f}s"

    def _start_heartbeat(self) -> None:
        removed = self.store.remove_temporaries()
        if removed:
            logger.info("removed %d temporary file(s) left by interrupted writes", removed)
        self._thread = threading.Thread(target=self._beat, name="bulkscribe-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                # Conditional on this holder's last record: refused once another run took over.
                version = self.store.replace_if(self.path, json.dumps(self._record()).encode(), self._version)
            except Exception:  # a missed beat is not fatal; the next one may get through
                logger.warning("lease heartbeat failed", exc_info=True)
                continue
            if version is None:
                logger.error("the lease of %s was taken by another run; this one stops writing", self.store.uri())
                self._lost.set()
                return
            self._version = version

    @property
    def lost(self) -> bool:
        """The heartbeat found the lease taken over."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raise LeaseLostError unless this run still holds the folder (one read)."""
        held = read_lease(self.store)
        if not self._lost.is_set() and _owned_by(held, self.owner):
            return
        self._lost.set()
        held = held or {}
        raise LeaseLostError(
            f"{self.store.uri()} was taken over by another bulkscribe {held.get('purpose', 'run')} "
            f"(host {held.get('host')}, pid {held.get('pid')}) while this one had stalled; this run stopped "
            "before writing again. What is committed stays; the other run goes on from there."
        )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._version is not None and not self._lost.is_set():
            # Conditional: a release that lands after a takeover leaves the new lease be.
            self.store.delete_if(self.path, self._version)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lease_path(store: OutputStore) -> str:
    return store.path("_lease.json")


def read_lease(store: OutputStore) -> dict[str, Any] | None:
    """The lease record, None if there is none; a file there that is not a lease record
    (lease writes are whole, so none of ours) reads as {}: a lease with no heartbeat."""
    try:
        held = store.read_json(lease_path(store))
    except ValueError:
        return {}
    return held if held is None or isinstance(held, dict) else {}


def holds(store: OutputStore, owner: str) -> bool:
    """Whether the lease of `store`'s folder is still `owner`'s."""
    return _owned_by(read_lease(store), owner)


def _owned_by(held: dict[str, Any] | None, owner: str) -> bool:
    return held is not None and held.get("owner") == owner


def stale_reason(held: dict[str, Any]) -> str | None:
    """Why the lease `held` may be taken over, or None while its holder looks alive.
    A heartbeat that looks old ("no heartbeat for ...") is read on the holder's clock:
    `Lease.acquire` watches the record for TTL_S before it believes it."""
    here = process_namespace()
    if (held.get("host") == socket.gethostname() and here != "unknown" and held.get("processes") == here
            and not _alive(int(held.get("pid", 0)))):
        return f"its process {held.get('pid')} on this host is gone"
    age = time.time() - float(held.get("heartbeat_at", 0))
    if age > TTL_S:
        return f"no heartbeat for {age:.0f}s"
    return None


def process_namespace() -> str:
    """This boot of this host's PID namespace: where a pid means this very process."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return "unknown"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

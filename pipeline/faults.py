"""Named crash points, so that the fault tests can kill a run exactly where it hurts.

With `BULKSCRIBE_CRASH_AT=<name>` in the environment, the first process to reach
`crashpoint(<name>)` SIGKILLs the job's driver and then itself: no cleanup, no
`finally`, as when a machine loses power. With `BULKSCRIBE_DIE_AT=<name>`, every
process reaching `diepoint(<name>)` SIGKILLs itself (an actor that cannot start). With `BULKSCRIBE_SHARD_PAUSE_S=<seconds>`,
every shard pauses that long once it has started, so that a test killing an actor
"mid-shard" cannot miss on a fast machine. With `BULKSCRIBE_GATE=<name>=<path>`, a
process reaching `gate(<name>)` creates `<path>.waiting-<pid>` and waits there until
`<path>` exists, so that a test can hold shards at a point while it does something else.
Without the variables they cost one lookup.
"""

from __future__ import annotations

import os
import signal
import time

CRASH_AT_ENV = "BULKSCRIBE_CRASH_AT"
DIE_AT_ENV = "BULKSCRIBE_DIE_AT"
SHARD_PAUSE_ENV = "BULKSCRIBE_SHARD_PAUSE_S"
DRIVER_PID_ENV = "BULKSCRIBE_DRIVER_PID"
GATE_ENV = "BULKSCRIBE_GATE"

# The points, in the order a run reaches them.
POINTS = (
    "before_plan_write",  # driver: job.json written, the plan not yet
    "after_parts_write",  # actor: both parts of a shard staged, its marker not yet
    "after_marker",  # actor: a shard's marker written, its parts not yet published
)
DIEPOINTS = (
    "actor_load",  # actor: about to load its model
)
GATES = (
    "before_parts_write",  # actor: a shard transcribed, none of it written yet
)


def crashpoint(name: str) -> None:
    if os.environ.get(CRASH_AT_ENV) != name:
        return
    driver = int(os.environ.get(DRIVER_PID_ENV, os.getpid()))
    if driver != os.getpid():
        os.kill(driver, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def diepoint(name: str) -> None:
    if os.environ.get(DIE_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def shard_pause() -> None:
    seconds = os.environ.get(SHARD_PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


def gate(name: str) -> None:
    point, _, path = os.environ.get(GATE_ENV, "").partition("=")
    if point != name or not path:
        return
    with open(f"{path}.waiting-{os.getpid()}", "w"):
        pass
    while not os.path.exists(path):
        time.sleep(0.05)

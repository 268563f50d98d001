"""Shards to a pool of Ray actors: a small dispatcher over Ray core actors.

Each actor (`ShardWorker`) loads one model and runs one shard per call. The driver keeps
a queue of shard numbers and gives the next one to whichever actor is free, building a
shard's payload only then, so driver memory does not grow with the plan. Measured on
2 cores with calls that do nothing: 2,000 shards took 3.2 s this way and 35.4 s through
Ray Data's `from_items(...).map_batches(...)`, which puts one block per shard in the
object store and runs a coordinator beside the actors (`bench/scale.py`).

What happens when things go wrong:
- An actor dies (killed, out of memory, its node lost or drained): the shard it held
  goes back to the front of the queue, and a new actor is started where there is room.
  A shard that kills its actor `MAX_LOSSES` times stops the run (the run can resume).
- An error raised inside a call (storage failing after its retries, a bug) stops the
  run: it is raised here, as it would be in one process.
- The pool is elastic unless its size is fixed: while shards wait it starts actors on
  CPUs that appear (a node that joins), checked every `POLL_S` seconds.
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.actor import load_transcriber, node_name, process_shard
from pipeline.commit import ShardResult
from pipeline.config import PoolSize, WorkerConfig
from pipeline.store import OutputStore

logger = logging.getLogger(__name__)

POLL_S = 1.0
MAX_LOSSES = 3


def units_to_ipc(units: pa.Table) -> bytes:
    """A shard's plan rows as Arrow IPC bytes, the payload of one call: types (manifest
    columns too) survive the trip."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, units.schema) as writer:
        writer.write_table(units)
    return sink.getvalue()


def units_from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()


class ShardLostError(RuntimeError):
    """A shard's actor died too many times: the shard itself may be what kills it."""


class ShardWorker:
    """The Ray actor: `load` once (the model), then `process` one shard per call.

    Loading is a call of its own, not the constructor, so that a model that fails to
    load raises here like any error, while an actor that dies is told apart by Ray.
    """

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.transcriber = None
        self.store = None
        self.node = node_name()

    def load(self) -> str:
        self.transcriber = load_transcriber(self.config)
        self.store = OutputStore(self.config.output, self.config.storage_options)
        return self.node

    def process(self, shard: int, payload: bytes, mode: str) -> ShardResult:
        return process_shard(shard, units_from_ipc(payload), self.transcriber, self.store, self.config, self.node,
                             retry_failed=mode == "retry")


@dataclass
class _Actor:
    handle: Any
    number: int


def run_shards(
    shards: list[int],
    payload: Callable[[int], bytes],
    config: WorkerConfig,
    pool: PoolSize,
    env: dict[str, str],
    mode: str = "run",
) -> Iterator[ShardResult]:
    """Run `shards` on a pool of ShardWorker actors; yield each result as it comes.

    Args:
        payload: a shard's plan rows as Arrow IPC bytes (`units_to_ipc`), asked
            for when the shard is handed to an actor.
        env: what the actors' environment needs beyond their worker processes' own
            (`RaySession.actor_runtime_env`); none: a worker process of Ray's as it is.
    """
    import ray
    from ray.exceptions import RayActorError

    worker = ray.remote(ShardWorker).options(num_cpus=config.threads, max_restarts=0,
                                             **({"runtime_env": {"env_vars": env}} if env else {}))
    queue = deque(shards)
    starting: dict[Any, _Actor] = {}  # load() call -> actor
    busy: dict[Any, tuple[_Actor, int]] = {}  # process() call -> (actor, shard)
    idle: list[_Actor] = []
    losses: Counter[int] = Counter()
    started = 0
    last_look = 0.0

    def start(count: int) -> None:
        nonlocal started
        for _ in range(count):
            started += 1
            actor = _Actor(worker.remote(config), started)
            starting[actor.handle.load.remote()] = actor

    def alive() -> int:
        return len(starting) + len(busy) + len(idle)

    start(pool.initial)
    try:
        while queue or busy:
            while idle and queue:
                actor, shard = idle.pop(), queue.popleft()
                busy[actor.handle.process.remote(shard, payload(shard), mode)] = (actor, shard)
            if queue and not starting and alive() < pool.maximum and time.monotonic() - last_look >= POLL_S:
                # Grow onto CPUs that appeared (a node joined); one look per POLL_S.
                last_look = time.monotonic()
                room = int(ray.available_resources().get("CPU", 0.0) // config.threads)
                if room > 0:
                    logger.info("%d more actor(s): CPUs free while %d shard(s) wait", min(room, pool.maximum - alive()),
                                len(queue))
                    start(min(room, pool.maximum - alive()))
            done, _ = ray.wait([*busy, *starting], num_returns=1, timeout=POLL_S)
            for ref in done:
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        node = ray.get(ref)
                    except RayActorError:
                        logger.warning("actor %d was lost while loading its model", actor.number)
                        if alive() < pool.minimum:
                            start(1)
                        continue
                    logger.debug("actor %d ready on %s", actor.number, node)
                    idle.append(actor)
                    continue
                actor, shard = busy.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:
                    losses[shard] += 1
                    if losses[shard] >= MAX_LOSSES:
                        raise ShardLostError(
                            f"shard {shard:06d} lost its actor {losses[shard]} times (last: {exc}); "
                            "it may be what kills the actor (memory?)"
                        ) from None
                    logger.warning("actor %d died with shard %06d; the shard runs again", actor.number, shard)
                    queue.appendleft(shard)
                    if not pool.elastic or alive() < pool.minimum:
                        start(1)
                    continue
                idle.append(actor)
                yield result
            if not queue:
                # Nothing left to hand out: free the CPUs of idle actors for others.
                for actor in idle:
                    ray.kill(actor.handle)
                idle.clear()
    finally:
        for actor in [*idle, *starting.values(), *(a for a, _ in busy.values())]:
            ray.kill(actor.handle)

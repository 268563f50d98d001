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
  CPUs that appear (a node that joins), checked every `POLL_S` seconds. On a cluster
  (`per_node`) actors are placed node by node, each with its node's own tuning profile
  (threads, at most its actors), which a task on the node reads once (`_NodeProfiles`).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from pipeline.faults import diepoint
from pipeline.ray_session import available_resources_per_node
from pipeline.store import OutputStore

logger = logging.getLogger(__name__)

POLL_S = 1.0
MAX_LOSSES = 3
# Actors lost while loading, one after another with none loaded between: not a node
# that left, but actors that cannot start (see the error raised).
MAX_LOAD_LOSSES = 20
# How long a run waits at its start for the nodes' tuning profiles before placing actors
# (a probe is a zero-CPU task: a worker process started on each node).
PROBE_WAIT_S = 30.0


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


class ActorStartError(RuntimeError):
    """Actor after actor died while loading its model: none can start."""


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
        diepoint("actor_load")
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
    # The node it was placed on (per-node placement), else None.
    node: str | None = None


@dataclass(frozen=True)
class NodeProfile:
    """How a node runs actors: `threads` each, at most `actors` (None: as many as fit)."""

    threads: int
    actors: int | None
    source: str


def _read_node_profile(default_threads: int) -> NodeProfile:
    """The tuning profile of the node this runs on (a task placed there), else
    `default_threads`; never more threads than the CPUs Ray gives the node (a node
    started with fewer than its machine's, whose profile they would not fit, would
    otherwise get no actor)."""
    import ray

    from pipeline.tune import load_profile

    node = ray.get_runtime_context().get_node_id()
    cpus = next((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["NodeID"] == node), 0)
    profile = load_profile()
    if profile is None:
        return NodeProfile(max(1, min(default_threads, cpus)), None, "no tuning profile")
    if 0 < cpus < profile.threads:
        return NodeProfile(cpus, None, f"{profile.source}: {profile.threads} threads, more than the node's {cpus} CPU(s)")
    return NodeProfile(profile.threads, profile.actors, profile.source)


class _NodeProfiles:
    """Each node's `NodeProfile`, read by a zero-CPU task pinned to the node, once per node."""

    def __init__(self, default_threads: int):
        import ray

        self.default_threads = default_threads
        self.known: dict[str, NodeProfile] = {}
        self.asked: dict[Any, str] = {}  # probe task -> node id
        self._probe = ray.remote(num_cpus=0, max_retries=0)(_read_node_profile)

    def ask(self, node: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if node in self.known or node in self.asked.values():
            return
        strategy = NodeAffinitySchedulingStrategy(node, soft=False)
        self.asked[self._probe.options(scheduling_strategy=strategy).remote(self.default_threads)] = node

    def answer(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayError

        node = self.asked.pop(ref)
        try:
            self.known[node] = ray.get(ref)
        except RayError as exc:  # the node left meanwhile: asked again if it is seen again
            logger.info("node %s did not answer for its tuning profile: %s", node[:8], exc)
            return
        profile = self.known[node]
        logger.info("node %s: %d thread(s) per actor%s (%s)", node[:8], profile.threads,
                    f", at most {profile.actors} actor(s)" if profile.actors else "", profile.source)


def run_shards(
    shards: list[int],
    payload: Callable[[int], bytes],
    config: WorkerConfig,
    pool: PoolSize,
    env: Callable[[int], dict[str, str]],
    mode: str = "run",
    per_node: bool = False,
) -> Iterator[ShardResult]:
    """Run `shards` on a pool of ShardWorker actors; yield each result as it comes.

    Args:
        payload: a shard's plan rows as Arrow IPC bytes (`units_to_ipc`), asked
            for when the shard is handed to an actor.
        env: what the environment of an actor of so many threads needs beyond its
            worker process's own (`RaySession.actor_runtime_env`); none: a worker
            process of Ray's as it is.
        per_node: place an elastic pool's actors node by node, each node's with its own
            tuning profile (`_NodeProfiles`); `config.threads` where a node has none.
    """
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    worker = ray.remote(ShardWorker)
    profiles = _NodeProfiles(config.threads) if per_node and pool.elastic else None
    queue = deque(shards)
    starting: dict[Any, _Actor] = {}  # load() call -> actor
    busy: dict[Any, tuple[_Actor, int]] = {}  # process() call -> (actor, shard)
    idle: list[_Actor] = []
    losses: Counter[int] = Counter()
    started = 0
    load_losses = 0  # one after another
    last_look = 0.0

    def start(count: int, node: str | None = None, threads: int = config.threads) -> None:
        nonlocal started
        options = {"num_cpus": threads, "max_restarts": 0}
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        if env_vars := env(threads):
            options["runtime_env"] = {"env_vars": env_vars}
        for _ in range(count):
            started += 1
            handle = worker.options(**options).remote(
                config if threads == config.threads else dataclasses.replace(config, threads=threads))
            actor = _Actor(handle, started, node)
            starting[actor.handle.load.remote()] = actor

    def actors() -> list[_Actor]:
        return [*starting.values(), *(a for a, _ in busy.values()), *idle]

    def alive() -> int:
        return len(starting) + len(busy) + len(idle)

    def grow() -> None:
        """Start actors on CPUs free while shards wait: node by node with each node's
        profile (`profiles`), else as many of `config.threads` CPUs as the cluster has free."""
        if profiles is None:
            room = min(int(ray.available_resources().get("CPU", 0.0) // config.threads), pool.maximum - alive())
            if room > 0:
                logger.info("%d more actor(s): CPUs free while %d shard(s) wait", room, len(queue))
                start(room)
            return
        on_node = Counter(a.node for a in actors())
        for node, free in available_resources_per_node().items():
            cpus = free.get("CPU", 0.0)
            if cpus < 1:
                continue
            profile = profiles.known.get(node)
            if profile is None:  # placed once its profile is known
                profiles.ask(node)
                continue
            room = int(cpus // profile.threads)
            if profile.actors is not None:
                room = min(room, profile.actors - on_node[node])
            room = min(room, pool.maximum - alive())
            if room > 0:
                logger.info("%d more actor(s) on node %s (%d thread(s) each) while %d shard(s) wait",
                            room, node[:8], profile.threads, len(queue))
                start(room, node, profile.threads)

    if profiles is None:
        start(pool.initial)
    else:
        # Each node's profile first (a second or two), so that no actor is placed blind.
        grow()
        if profiles.asked:
            answered, _ = ray.wait(list(profiles.asked), num_returns=len(profiles.asked), timeout=PROBE_WAIT_S)
            for ref in answered:
                profiles.answer(ref)
        grow()
        if not alive():  # no node has room: one actor anywhere asks the autoscaler for one
            start(1)
    try:
        while queue or busy:
            while idle and queue:
                actor, shard = idle.pop(), queue.popleft()
                busy[actor.handle.process.remote(shard, payload(shard), mode)] = (actor, shard)
            if queue and not starting and alive() < pool.maximum and time.monotonic() - last_look >= POLL_S:
                # Grow onto CPUs that appeared (a node joined); one look per POLL_S.
                last_look = time.monotonic()
                grow()
            asked = list(profiles.asked) if profiles else []
            done, _ = ray.wait([*busy, *starting, *asked], num_returns=1, timeout=POLL_S)
            for ref in done:
                if profiles is not None and ref in profiles.asked:
                    profiles.answer(ref)
                    last_look = 0.0  # place actors on that node at the next turn
                    continue
                if ref in starting:
                    actor = starting.pop(ref)
                    try:
                        node = ray.get(ref)
                    except RayActorError as exc:
                        load_losses += 1
                        if load_losses >= MAX_LOAD_LOSSES:
                            raise ActorStartError(
                                f"{load_losses} actors in a row were lost while loading their model (last: "
                                f"{str(exc).splitlines()[0]}). Nodes out of memory, or a driver and a cluster that "
                                "disagree on token authentication (RAY_AUTH_MODE, and the token in ~/.ray/auth_token "
                                "or $RAY_AUTH_TOKEN) do this; Ray's logs say which"
                            ) from None
                        logger.warning("actor %d was lost while loading its model", actor.number)
                        if alive() < pool.minimum:
                            start(1)
                        continue
                    load_losses = 0
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
                    if isinstance(exc, ActorUnavailableError):
                        # Unreachable, not known dead: it may still be transcribing the
                        # shard, and commit it late (its writes are fenced, see
                        # pipeline.commit). It is stopped, so that its CPUs come back.
                        with contextlib.suppress(Exception):
                            ray.kill(actor.handle)
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
        for actor in actors():
            ray.kill(actor.handle)

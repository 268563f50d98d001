"""The Ray a job runs on: an embedded local Ray started for the job and stopped after
it, or a cluster joined at an address (or $RAY_ADDRESS inside a Ray job). Ray's token
authentication stays on. An embedded Ray runs without its dashboard (`include_dashboard=False`:
Ray keeps a dashboard process with its usage-stats module only, no web server and no
job API): nobody submits jobs to it, and it starts about 2 s sooner and uses 4% of a
core less while it runs (measured: 7.8% against 4.2% of a core for Ray's own
processes, 2 idle actors).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Iterator

from pipeline.config import JobSpec, PoolSize

logger = logging.getLogger(__name__)

WORKER_SETUP_ENV = "BULKSCRIBE_WORKER_SETUP"
# Two malloc arenas, not eight per core: with a decoding thread beside the model, the
# extra arenas fragmented and an actor's peak memory crept up window after window
# (1110 to 1244 MB over three 10-minute windows; 995 to 1078 MB with two arenas).
# glibc reads it when the process starts, so it must be in the actor's environment.
ACTOR_ENV = {"MALLOC_ARENA_MAX": "2"}


def actor_env(threads: int) -> dict[str, str]:
    """The environment of an actor of `threads` threads (see `transcriber.process_env`)."""
    from pipeline.transcriber import process_env

    return {**ACTOR_ENV, **process_env(threads)}


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster a job joins (`address`, or $RAY_ADDRESS inside a Ray job); None
    for a Ray of its own."""
    return address or os.environ.get("RAY_ADDRESS")


def joins_cluster(spec: JobSpec) -> bool:
    return cluster_address(spec.address) is not None


@dataclass(frozen=True)
class RaySession:
    """The Ray a job runs on: the CPUs it offers, and where it keeps its own logs."""

    cpus: float
    logs: str | None = None


@contextlib.contextmanager
def ray_session(spec: JobSpec) -> Iterator[RaySession]:
    """Join a cluster, reuse a running Ray, or start one here; yield what it offers.

    Token authentication is on unless the user's environment turns it off
    (RAY_AUTH_MODE=disabled). Said explicitly, Ray keeps it on without printing a warning
    on every run, and a driver that joins a cluster sends its token (without the mode
    set, a driver joining a token cluster waits forever instead of failing).
    Ray reads the mode when it is imported, so it is set first.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    address = cluster_address(spec.address)
    if ray.is_initialized():
        yield RaySession(ray.cluster_resources().get("CPU", 1.0))
        return
    _quiet_ray_logs()
    runtime_env = {}
    hook = os.environ.get(WORKER_SETUP_ENV)
    if hook:
        runtime_env["worker_process_setup_hook"] = hook
    if address:
        context = ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=runtime_env)
    else:
        context = ray.init(
            # "local": always a new Ray of our own, even where `ray start` runs a cluster.
            address="local",
            num_cpus=len(os.sched_getaffinity(0)),
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env=runtime_env,
        )
    session_dir = (context.address_info or {}).get("session_dir")
    logs = os.path.join(session_dir, "logs") if session_dir else None
    logger.debug("Ray's own logs: %s", logs)
    try:
        yield RaySession(ray.cluster_resources().get("CPU", 1.0), logs)
    finally:
        ray.shutdown()


def run_setup_hook() -> None:
    """Call $BULKSCRIBE_WORKER_SETUP (`module.function`) here; Ray calls it in every worker.

    For what must happen in every process before a URL can be opened, such as
    registering a custom fsspec filesystem.
    """
    hook = os.environ.get(WORKER_SETUP_ENV)
    if hook:
        module, _, name = hook.rpartition(".")
        getattr(importlib.import_module(module), name)()


def _quiet_ray_logs() -> None:
    for name in ("ray",):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def autoscaler_request(pool: PoolSize, threads: int) -> Iterator[None]:
    """Ask a cluster's autoscaler for the CPUs an elastic pool could use; withdrawn at the end.

    Without it an autoscaler sees only the actors the pool has asked for so far, and a
    cluster that starts with no workers would grow one node at a time.
    """
    if not pool.elastic:
        yield
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": threads}] * pool.maximum)
    try:
        yield
    finally:
        request_resources(bundles=[])

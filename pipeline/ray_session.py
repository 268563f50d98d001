"""The Ray a job runs on: an embedded local Ray started for the job and stopped after
it, or a cluster joined at an address (or $RAY_ADDRESS inside a Ray job). Ray's token
authentication stays on, and the dashboard of an embedded Ray listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import Iterator

from pipeline.config import JobSpec, PoolSize

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


def cluster_address(spec: JobSpec) -> str | None:
    """The Ray cluster the job joins (its address, or $RAY_ADDRESS inside a Ray job); None
    for a Ray of its own."""
    return spec.address or os.environ.get("RAY_ADDRESS")


def joins_cluster(spec: JobSpec) -> bool:
    return cluster_address(spec) is not None


@contextlib.contextmanager
def ray_session(spec: JobSpec) -> Iterator[float]:
    """Yield the CPUs Ray offers: join a cluster, reuse a running Ray, or start one here."""
    import ray

    address = cluster_address(spec)
    if ray.is_initialized():
        yield ray.cluster_resources().get("CPU", 1.0)
        return
    _quiet_ray_logs()
    runtime_env = {}
    hook = os.environ.get(WORKER_SETUP_ENV)
    if hook:
        runtime_env["worker_process_setup_hook"] = hook
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(
            # "local": always a new Ray of our own, even where `ray start` runs a cluster.
            address="local",
            num_cpus=len(os.sched_getaffinity(0)),
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env=runtime_env,
        )
    try:
        yield ray.cluster_resources().get("CPU", 1.0)
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

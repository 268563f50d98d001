"""The Ray a job runs on: an embedded local Ray started for the job and stopped after
it, or a cluster joined at an address (or $RAY_ADDRESS inside a Ray job). Ray's token
authentication stays on. An embedded Ray runs without its dashboard (`include_dashboard=False`:
Ray keeps a dashboard process with its usage-stats module only, no web server and no
job API): nobody submits jobs to it, and it starts about 2 s sooner and uses 4% of a
core less while it runs (measured: 7.8% against 4.2% of a core for Ray's own
processes, 2 idle actors).

Two things make an embedded Ray's first shard start sooner (a new job's Ray start-up is
about 5 s, and Ray's processes take a fair share of 2 cores while they start):
- Its raylet starts with the actors' environment (`actor_env`), so every worker process
  has it from birth, including those Ray starts before the first actor is asked for;
  an actor with a `runtime_env` of its own would need a new process (two 1-CPU actors:
  2.0 s to their first call, against 0.65 s in a prestarted worker).
- `OnDemandRay.start_ahead` starts it in a thread while the driver lists and plans a
  new job's inputs.

This is the one module that reaches into Ray's private modules (`ray._private`): the
free CPUs of each node, the embedded node's processes, Ray's own log filter. Each use is
exercised by tests/test_structure.py (`test_private_apis_of_dependencies_still_exist`),
which fails the day Ray moves it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
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
    """The environment of an actor of `threads` threads (see `engine.process_env`)."""
    from pipeline.engine import process_env

    return {**ACTOR_ENV, **process_env(threads)}


def available_resources_per_node() -> dict[str, dict[str, float]]:
    """Node id -> its resources not taken (`{"CPU": 1.0, ...}`), from Ray's global state:
    a DeveloperAPI (`ray._private.state`) with no public equivalent that gives what is
    free per node (`ray.available_resources` sums the cluster)."""
    from ray._private.state import available_resources_per_node as free_per_node

    return free_per_node()


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
    # The environment every worker process starts with (an embedded Ray's), if known.
    worker_env: dict[str, str] | None = None

    def actor_runtime_env(self, threads: int) -> dict[str, str]:
        """The `env_vars` an actor of `threads` threads must ask for: none where every
        worker has them already."""
        env = actor_env(threads)
        return {} if self.worker_env == env else env


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
        worker_env = None
    else:
        from pipeline.engine import child_environment

        worker_env = actor_env(spec.actors.threads)
        with child_environment(worker_env):  # the raylet's, and so every worker's
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
        yield RaySession(ray.cluster_resources().get("CPU", 1.0), logs, worker_env)
    finally:
        if not address:
            _kill_autoscaler_monitor()
        ray.shutdown()


def _kill_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of the Ray started here, before `ray.shutdown`.

    `ray.shutdown` stops Ray's processes one by one, the monitor after the GCS. Told to
    stop then, the monitor tries to tell the GCS that is gone, and Ray kills it after a
    grace second: 1.0 of the 1.5 s `ray.shutdown` took (two idle actors, 2 cores).
    Killed first, it costs nothing: a Ray of one node has nothing to scale. This reads
    Ray's private record of the processes it started; should a later Ray keep them
    elsewhere, nothing is killed here and `ray.shutdown` stops the monitor as before.
    """
    import ray

    with contextlib.suppress(AttributeError, OSError):
        node = ray._private.worker._global_node
        for process in node.all_processes.get("monitor", ()):
            process.process.kill()


class OnDemandRay:
    """The Ray of one job (`ray_session`), started or joined when first asked for
    (`session()`), or ahead of that in a background thread (`start_ahead()`); stopped
    by `close()`.

    A new job needs Ray once its inputs are listed and planned; started ahead, Ray's
    start-up overlaps that work. A rerun asks only if shards are pending (a finished
    job reruns without Ray).
    """

    def __init__(self, spec: JobSpec):
        self._spec = spec
        self._context: contextlib.AbstractContextManager | None = None
        self._session: RaySession | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._closed = threading.Event()
        self._error: BaseException | None = None

    def start_ahead(self) -> None:
        if self._thread is not None or self._session is not None:
            return
        if threading.current_thread() is threading.main_thread():
            # What ray.init does in the main thread (it cannot from another): a SIGTERM
            # unwinds the driver, and Ray is stopped on the way out.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self._thread = threading.Thread(target=self._start_in_thread, name="ray-start", daemon=True)
        self._thread.start()

    def session(self) -> RaySession:
        if self._thread is not None:
            self._started.wait()
            if self._error is not None:
                raise self._error
        if self._session is None:
            self._start()
        assert self._session is not None
        return self._session

    @property
    def logs(self) -> str | None:
        return self._session.logs if self._session is not None else None

    def close(self) -> None:
        if self._thread is not None:
            self._started.wait()
        context, self._context, self._session = self._context, None, None
        try:
            if context is not None:
                context.__exit__(None, None, None)
        finally:
            if self._thread is not None:
                self._closed.set()
                self._thread.join()
                self._thread = None

    def __enter__(self) -> "OnDemandRay":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _start(self) -> None:
        context = ray_session(self._spec)
        self._session = context.__enter__()
        self._context = context

    def _start_in_thread(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # raised where the session is asked for
            self._error = exc
        finally:
            self._started.set()
        # Ray's processes die with the thread that started them (Linux's parent-death
        # signal follows threads): this one lives until Ray is stopped.
        self._closed.wait()


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(signum)


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
    # ray.init in `OnDemandRay`'s thread says so; the handler is set in the main thread.
    logging.getLogger("ray._private.worker").addFilter(_not_the_sigterm_warning)


def _not_the_sigterm_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("SIGTERM handler is not set")


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

"""Run a job: plan (or resume), start or join Ray (`pipeline.ray_session`), stream the
pending shards through the actor pool (`pipeline.dispatch`), record the run."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import logging
import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import channels, compact, inputs, models, plan, windows
from pipeline.commit import ShardResult, retry_intent_path
from pipeline.config import ActorOptions, JobSpec, WorkerConfig, fingerprint, fingerprint_fields
from pipeline.dispatch import run_shards, units_to_ipc
from pipeline.faults import DRIVER_PID_ENV, crashpoint
from pipeline.languages import check_language, language_check_model, route_sha256, settle_other_languages
from pipeline.lease import Lease, LeaseLostError
from pipeline.ray_session import (OnDemandRay, RaySession, autoscaler_request, joins_cluster, ray_session,
                                  run_setup_hook)
from pipeline.index import all_markers, unindex, update_index
from pipeline.ledger import append_plan, create_job, plan_parts, read_job, read_plan, write_run
from pipeline.markers import committed_shards
from pipeline.publish import publish_pending
from pipeline.records import CommitMarker, JobRecord, RunRecord, iso
from pipeline.progress import progress_bar
from pipeline.report import Summary, summarize
from pipeline.resume import check_fingerprint, folder_options, with_folder_options
from pipeline.store import OutputStore

logger = logging.getLogger(__name__)

def run(spec: JobSpec) -> Summary:
    """Transcribe everything `spec` names into `spec.output`, resuming what is there.

    Returns:
        The summary of the output folder after the run, with this run's shard counts.

    Raises:
        JobMismatchError: the folder was made with options that change the transcript.
        ModelError, InputError: before any work starts.
    """
    started = time.time()
    run_setup_hook()
    store = OutputStore(spec.output, spec.storage_options)
    store.refuse_links_out()
    store.check_conditional_writes()
    job = read_job(store)
    spec = with_folder_options(dataclasses.replace(spec, inputs=inputs.absolute(spec.inputs)), job)
    model = models.resolve(spec.whisper.model)
    check_language(spec.whisper, model)
    spec = settle_other_languages(spec, model, job)
    # Workers of an embedded Ray inherit this; the fault tests use it to kill the driver.
    os.environ[DRIVER_PID_ENV] = str(os.getpid())
    with OnDemandRay(spec) as ray_runtime:
        if job is None and inputs.local_paths_exist(spec.inputs):
            ray_runtime.start_ahead()  # a new job will need it: Ray starts while the inputs are listed
        # Nothing is written before the inputs are known to exist.
        units = None if _goes_by_saved_plan(spec, job, store) else inputs.expand(spec.inputs, spec.storage_options)
        with Lease(store) as lease:
            return _run_locked(spec, store, model, units, started, lease, ray_runtime)


def _goes_by_saved_plan(spec: JobSpec, job: JobRecord | None, store: OutputStore) -> bool:
    """Whether this run may skip listing its inputs: a rerun naming the inputs its folder
    was planned from (local paths compared as absolute paths, see `inputs.absolute`),
    without `rescan` (listing 10^6 files takes half a minute on a local disk, 1,000
    requests on S3)."""
    if spec.rescan or job is None or list(spec.inputs) != job.spec.get("inputs") or not plan_parts(store):
        return False
    logger.info("resuming the saved plan; the inputs are not listed again (--rescan plans files added since)")
    return True


def _run_locked(spec: JobSpec, store: OutputStore, model: models.ResolvedModel, units: pa.Table | None,
                started: float, lease: Lease, ray_runtime: OnDemandRay) -> Summary:
    """`units`: the inputs as listed, or None to go by the saved plan. Ray is asked for
    only when there is work: a finished job reruns in a second."""
    fields = fingerprint_fields(spec.whisper, model.sha256, route_sha256(spec))
    job = read_job(store)
    if job is not None:
        check_fingerprint(job, fields)
        _finish_interrupted_commits(store)
    results: list[ShardResult] = []
    if job is None:
        total_s = sum(plan.estimates(units))
        shard_audio_s = spec.shard_audio_s or plan.choose_shard_audio_s(
            total_s, spec.actors.actors_for(ray_runtime.session().cpus), units.num_rows, spec.actors.streams)
        job = _new_job(spec, model, fields, shard_audio_s)
        lease.check()
        create_job(store, job)
    planned = _extend_plan(store, units, job.shard_audio_s, job.window_s, lease, spec.storage_options,
                           split_channels=spec.whisper.channels == "split")
    shards = sorted(set(planned.column("shard").to_pylist()))
    # In an object store, the plan's key ranges of markers listed at once, not one
    # listing of 100 pages in sequence for 10^5 markers.
    committed = committed_shards(store, among=shards)
    pending = [s for s in shards if s not in committed]
    logger.info(
        "%d unit(s) in %d shard(s): %d committed earlier (skipped), %d to run",
        planned.num_rows, len(shards), len(shards) - len(pending), len(pending),
    )
    if pending:
        # A pending shard in the index lost its marker (deleted by hand): it is
        # about to get a new one, which the index must not hide.
        lease.check()
        unindex(store, pending)
        # The note on a missing language model: once per folder, on its first run.
        config = _worker_config(spec, model.sha256, job.fingerprint,
                                language_check_model(spec, model, say_why=not committed), lease)
        session = ray_runtime.session()
        results = _execute(planned, pending, config, spec.actors, session, spec.progress,
                           joins=joins_cluster(spec), lease=lease)
    logs = ray_runtime.logs
    ray_runtime.close()
    return _finish_run(store, started, results, len(pending), len(shards) - len(pending), lease, logs)


def _finish_interrupted_commits(store: OutputStore) -> None:
    """Publish what commits cut short between marker and parts left staged, and remove
    the staged parts of attempts that lost (`publish.publish_pending`): one listing."""
    published, removed = publish_pending(store)
    if published or removed:
        logger.info("published the parts of %d shard(s) whose commit was cut short; removed the staged parts of "
                    "%d attempt(s) that lost", published, removed)


def _new_job(spec: JobSpec, model: models.ResolvedModel, fields: dict[str, Any], shard_audio_s: float) -> JobRecord:
    return JobRecord(
        output=spec.output,
        created_at=iso(time.time()),
        spec=spec.public_dict(),
        fingerprint=fingerprint(fields),
        fingerprint_fields=fields,
        model={"name": model.name, "sha256": model.sha256},
        shard_audio_s=shard_audio_s,
        window_s=spec.window_s,
        versions=_versions(),
    )


def _extend_plan(store: OutputStore, units: pa.Table | None, shard_audio_s: float, window_s: float | None,
                 lease: Lease, storage_options: dict[str, Any] | None, *, split_channels: bool = False) -> pa.Table:
    """The saved plan plus new shards for units it does not hold yet (`units` None: the
    saved plan); long new files are split into windows (files the plan holds are not
    measured again), and with `split_channels` each unit of a multi-channel file into
    one per channel (`pipeline.channels`)."""
    parts = plan_parts(store)
    planned = read_plan(store, parts)
    if units is None:
        if planned is None:  # removed by hand since the check before the lease
            raise inputs.InputError(f"{store.uri()}: its plan (_plan/) is gone; run again with --rescan")
        return planned
    fresh = plan.new_units(units, planned, by_uri=True)
    fresh = windows.split_long(fresh, window_s, storage_options=storage_options)
    if split_channels:
        fresh = channels.split_channels(fresh, storage_options)
    fresh = plan.new_units(fresh, planned)
    if fresh.num_rows:
        first = plan.next_shard(planned)
        added = plan.assign_shards(fresh, first, shard_audio_s)
        crashpoint("before_plan_write")
        lease.check()
        path = append_plan(store, added, after=parts)
        last = int(pc.max(added.column("shard")).as_py())
        logger.info("planned %d new unit(s) as shards %d-%d in %s", fresh.num_rows, first, last, path)
        planned = added if planned is None else pa.concat_tables([planned, added], promote_options="permissive")
    if planned is None:
        raise inputs.InputError("the inputs hold no audio or video files")
    return planned


def retry_failed(
    output: str,
    *,
    storage_options: dict[str, Any] | None = None,
    actors: ActorOptions = ActorOptions(),
    address: str | None = None,
    progress: bool | None = None,
    unit_timeout_s: float | None = None,
) -> Summary:
    """Transcribe again only the `failed` units of `output`, with the job's own options.

    Each shard holding a failure is rewritten and recommitted once; its other units keep
    their rows, and the retried units' `attempts` count the new attempt.
    """
    started = time.time()
    run_setup_hook()
    store = OutputStore(output, storage_options)
    job = read_job(store)
    if job is None:
        raise FileNotFoundError(f"{output} holds no bulkscribe job (no job.json)")
    whisper = folder_options(job)
    model = models.resolve(whisper.model)
    spec = JobSpec(inputs=tuple(job.spec["inputs"]), output=output, whisper=whisper, actors=actors,
                   address=address, storage_options=dict(storage_options or {}), progress=progress,
                   unit_timeout_s=unit_timeout_s, language_check=job.spec.get("language_check"))
    check_fingerprint(job, fingerprint_fields(whisper, model.sha256, route_sha256(spec)))
    store.refuse_links_out()
    store.check_conditional_writes()
    with Lease(store, "retry-failed") as lease:
        _finish_interrupted_commits(store)
        interrupted = store.shards_in("_retry", "*.json")
        markers = all_markers(store)
        shards = sorted({m.shard for m in markers if m.count("failed")} | interrupted)
        results: list[ShardResult] = []
        if shards:
            logger.info("retrying the failed units of %d shard(s)", len(shards))
            lease.check()
            # Their markers are about to be replaced: the index must not keep the old ones.
            unindex(store, shards)
            for shard in shards:
                store.write_json(retry_intent_path(store, shard), {"shard": shard, "started_at": iso(time.time())})
            config = _worker_config(spec, model.sha256, job.fingerprint,
                                    language_check_model(spec, model, say_why=False), lease)
            with ray_session(spec) as session:
                results = _execute(read_plan(store), shards, config, actors, session, progress,
                                   joins=joins_cluster(spec), mode="retry", lease=lease)
            summary = _finish_run(store, started, results, len(shards), 0, lease, session.logs)
        else:
            logger.info("no failed units to retry")
            summary = _finish_run(store, started, results, 0, 0, lease)
        summary.retried = sum(m.count("failed") for m in markers if m.shard in shards)
        return summary


def _worker_config(spec: JobSpec, model_sha256: str, job_fingerprint: str, language_check: str | None,
                   lease: Lease) -> WorkerConfig:
    return WorkerConfig(
        output=spec.output,
        whisper=spec.whisper,
        threads=spec.actors.threads,
        model_name=spec.whisper.model,
        model_sha256=model_sha256,
        fingerprint=job_fingerprint,
        storage_options=dict(spec.storage_options),
        unit_timeout_s=spec.unit_timeout_s,
        language_check=language_check,
        lease_owner=lease.owner,
        batch_size=spec.actors.streams,
    )


def _finish_run(store: OutputStore, started: float, results: list[ShardResult], ran: int, skipped: int,
                lease: Lease, ray_logs: str | None = None) -> Summary:
    """Record this run in `_runs/` and summarise the folder."""
    wall_s = time.time() - started
    lease.check()
    audio_s = sum(r.audio_s for r in results if not r.skipped)
    write_run(store, 
        RunRecord(
            started_at=iso(started),
            finished_at=iso(time.time()),
            wall_s=wall_s,
            shards_ran=ran,
            shards_skipped=skipped,
            audio_s=audio_s,
            # Nodes that did work, for node-hours (and cost) in `bulkscribe status`.
            nodes=len({r.node.split("/")[-1] for r in results if not r.skipped}),
        )
    )
    # An actor stopped between a shard's marker and its parts may leave them staged
    # when no other attempt of the shard followed (its result was already counted).
    _finish_interrupted_commits(store)
    markers = update_index(store, before_write=lease.check)
    _compact(store, markers, lease)
    summary = summarize(store, audio_s=audio_s, wall_s=wall_s, markers=markers)
    summary.shards_ran, summary.shards_skipped = ran, skipped
    summary.ray_logs = ray_logs
    return summary


def _compact(store: OutputStore, markers: list[CommitMarker], lease: Lease) -> None:
    """Keep the compacted copies that queries read up to date (`pipeline.compact`): new
    ones once enough shards wait for one. Everything is committed by now: a failure here
    only leaves queries reading more parts, and is logged."""
    try:
        done = compact.compact(store, markers, at_least=compact.COMPACT_AT_SHARDS, before_write=lease.check)
    except LeaseLostError:
        raise
    except Exception as exc:  # the run's output is complete without it
        logger.warning("could not compact the parts for queries (`bulkscribe compact %s` tries again): %s: %s",
                       store.uri(), type(exc).__name__, exc)
        return
    if done.shards or done.dropped:
        logger.info("compacted %d shard(s) into %d file(s) for queries; %d shard(s) wait for the next",
                    done.shards, done.files, done.waiting)


def _execute(
    planned: pa.Table,
    pending: list[int],
    config: WorkerConfig,
    actors: ActorOptions,
    session: RaySession,
    progress: bool | None,
    *,
    joins: bool,
    mode: str = "run",
    lease: Lease | None = None,
) -> list[ShardResult]:
    """Run the pending shards on a pool of ShardWorker actors (`pipeline.dispatch`),
    the longest (by estimated audio) first; one progress bar. The pool is `actors.pool`
    for the session's CPUs. Where the job `joins` a cluster, an elastic pool grows as nodes
    join and asks the cluster's autoscaler for the CPUs its waiting shards could use, and
    with `actors.per_node` each node's actors take that node's tuning profile."""
    by_shard = dict(plan.group_by_shard(planned, pending))
    est_s = {s: pc.sum(t.column("est_audio_s")).as_py() or 0.0 for s, t in by_shard.items()}
    pool = actors.pool(session.cpus, len(pending), nodes_join=joins)
    per_node = actors.per_node
    if pool.elastic and per_node:
        logger.info("running %d shard(s) on actors placed node by node, each with its node's tuning profile "
                    "(else %d thread(s)), more as nodes join (up to %d)", len(by_shard), config.threads, pool.maximum)
    elif pool.elastic:
        logger.info("running %d shard(s) on %d actor(s) x %d thread(s), more as nodes join (up to %d)",
                    len(by_shard), pool.initial, config.threads, pool.maximum)
    else:
        logger.info("running %d shard(s) on %d actor(s) x %d thread(s)", len(by_shard), pool.initial, config.threads)
    results = []
    # Longest first: the last shards to start are the short ones, so no actor finishes a
    # long one alone while the others wait (16 files of 7.5 minutes planned as shards of
    # one or two files on 2 actors: 343 s in shard order, the last shard running alone
    # for 71 s; a process pool given the files took 290 s).
    longest_first = sorted(by_shard, key=est_s.__getitem__, reverse=True)
    shards = run_shards(longest_first, lambda s: units_to_ipc(by_shard[s]), config, pool,
                        session.actor_runtime_env, mode, per_node=per_node)
    request = autoscaler_request(pool, config.threads) if joins else contextlib.nullcontext()
    with request, progress_bar(est_s, progress) as count, contextlib.closing(shards):
        for result in shards:
            if lease is not None and (result.lease_lost or lease.lost):
                lease.check()  # raises: another run holds the folder now
            results.append(result)
            count(result)
    return results


def _versions() -> dict[str, str]:
    found = {}
    for dist in ("bulkscribe", "faster-whisper", "ctranslate2", "ray", "pyarrow"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "unknown"
    return found


__all__ = ["run", "retry_failed"]

"""One shard on one actor: transcribe its units, write both parts, commit it.

`pipeline.dispatch.ShardWorker` (the Ray actor) loads the model once with
`load_transcriber`, then calls `process_shard` for each shard it is given, for `run` and
for `retry-failed` alike. Each actor asks Ray for `threads` CPUs and runs CTranslate2 with
as many threads. A bad file becomes a `failed` row and its shard still commits; storage
and programming errors raise, and the run stops (it resumes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time

import pyarrow as pa

from pipeline import models
from pipeline.commit import ShardResult, may_write, retry_intent_path, stage_parts
from pipeline.config import WorkerConfig
from pipeline.faults import gate, shard_pause
from pipeline.ledger import next_attempt
from pipeline.markers import read_marker
from pipeline.publish import finish_publication
from pipeline.schema import FILES_SCHEMA, SEGMENTS_SCHEMA, FileRow, SegmentRow, plan_rows
from pipeline.store import OutputStore
from pipeline.transcriber import Transcriber
from pipeline.units import transcribe_units

logger = logging.getLogger(__name__)


def node_name() -> str:
    """`host/ray-node-id-prefix`: several Ray nodes may share one host."""
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host}/{ray.get_runtime_context().get_node_id()[:8]}"
    except ImportError:
        pass
    return host


def load_transcriber(config: WorkerConfig) -> Transcriber:
    """Resolve the model on this node, check it is the one the job planned with, load it."""
    model = models.resolve(config.model_name)
    if model.sha256 != config.model_sha256:
        raise models.ModelError(
            f"model {config.model_name!r} on {socket.gethostname()} has sha256 {model.sha256}, "
            f"but the job was planned with {config.model_sha256}"
        )
    language_id = None
    if config.language_check:
        try:
            language_id = models.resolve(config.language_check).path
        except models.ModelError as exc:
            if config.whisper.other_languages == "route":
                raise  # the job routes files in other languages to it: no node may skip that
            logger.warning("no language check on %s (%s): files are not flagged language_mismatch",
                           socket.gethostname(), exc)
    return Transcriber(model.path, config.whisper, config.threads, language_id_path=language_id)


def process_shard(
    shard: int,
    units: pa.Table,
    transcriber: Transcriber,
    store: OutputStore,
    config: WorkerConfig,
    node: str,
    *,
    retry_failed: bool = False,
) -> ShardResult:
    """Transcribe the units of `shard` (its plan rows), write both parts, commit it.

    With `retry_failed`, the shard is committed already: only its `failed` units are
    transcribed again, the others keep their rows as they are, and the marker is
    replaced (the caller holds the folder's lease). `_retry/NNNNNN.json`, written by the
    driver before, is removed only once the new marker is in place, so an interrupted
    retry is redone by the next `retry-failed`.
    """
    started = time.time()
    if retry_failed:
        # The marker's version first: its replacement is conditional on it, so a retry
        # that stalls while another run retries this shard cannot replace the newer one.
        marker_version = store.version(store.marker_path(shard))
        kept_files, kept_segments = _rows_to_keep(store, shard)
        attempt = next_attempt(store, shard)
    else:
        if (marker := read_marker(store, shard)) is not None:
            # At-least-once execution: an earlier attempt already committed this shard
            # (and if it was stopped before publishing its parts, they are published now).
            finish_publication(store, shard, marker)
            return ShardResult.of(marker, skipped=True)
        kept_files, kept_segments = {}, []
        attempt = next_attempt(store, shard, {"node": node, "pid": os.getpid()})
        shard_pause()
    planned = plan_rows(units)
    todo = [u for u in planned if u.unit_id not in kept_files]
    new_files: dict[str, FileRow] = {}
    segment_rows = kept_segments
    for row, segments in transcribe_units(todo, transcriber, config, attempt=attempt, node=node):
        new_files[row.unit_id] = row
        segment_rows.extend(segments)
    file_rows = [new_files.get(u.unit_id) or kept_files[u.unit_id] for u in planned]
    order = {u.unit_id: i for i, u in enumerate(planned)}
    segment_rows.sort(key=lambda s: (order[s.unit_id], s.segment))

    if not retry_failed and (marker := read_marker(store, shard)) is not None:
        # Another attempt (a retry while this one was thought lost) committed meanwhile:
        # leave its parts alone rather than replace them with equivalent ones.
        finish_publication(store, shard, marker)
        return ShardResult.of(marker, skipped=True)
    gate("before_parts_write")
    if not may_write(store, config, shard):
        return ShardResult.not_written(shard, attempt, len(file_rows), node)
    staged = stage_parts(shard, units, file_rows, segment_rows, store, config, attempt, started, node)
    marker = staged.marker
    if not retry_failed:
        return ShardResult.of(marker, skipped=False, committed=staged.commit(store))
    if not staged.replace(store, marker_version):
        return ShardResult.not_written(shard, attempt, len(file_rows), node)
    store.delete(retry_intent_path(store, shard))
    # This run transcribed the retried units only; the shard's other audio is old work.
    retried_s = sum(r.duration_s or 0.0 for r in new_files.values())
    return dataclasses.replace(ShardResult.of(marker, skipped=False, committed=True), audio_s=retried_s)


def _rows_to_keep(store: OutputStore, shard: int) -> tuple[dict[str, FileRow], list[SegmentRow]]:
    """The committed rows of the units of `shard` that did not fail."""
    files = store.read_parquet(store.part_path("files", shard)).select(FILES_SCHEMA.names)
    segments = store.read_parquet(store.part_path("segments", shard)).select(SEGMENTS_SCHEMA.names)
    kept = {r["unit_id"]: FileRow(**r) for r in files.to_pylist() if r["status"] != "failed"}
    return kept, [SegmentRow(**r) for r in segments.to_pylist() if r["unit_id"] in kept]

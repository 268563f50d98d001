"""One shard on one actor: transcribe its units, write both parts, commit it.

`pipeline.dispatch.ShardWorker` (the Ray actor) calls `process_shard` (or
`retry_failed_units`) with its loaded model; each actor asks Ray for `threads` CPUs and
runs CTranslate2 with as many threads. A bad file becomes a `failed` row and its shard
still commits; storage and programming errors raise, and the run stops (it resumes).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import resource
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import pyarrow as pa

from pipeline import audio, lease, models, quality, windows
from pipeline.config import WhisperOptions
from pipeline.faults import crashpoint, gate, shard_pause
from pipeline.schema import FILES_SCHEMA, STATUSES, files_table, segments_table
from pipeline.store import OutputStore
from pipeline.transcriber import Transcriber, Transcript, UnitTimeout

logger = logging.getLogger(__name__)

# Per-unit time limit unless the job sets one: a minute, plus ten seconds per second of
# audio (tiny.en on one thread runs near 20x real time, large models near 1x).
DEFAULT_TIMEOUT_BASE_S = 60.0
DEFAULT_TIMEOUT_PER_AUDIO_S = 10.0
DECODE_TIMEOUT_S = 1800.0
# Audio decoded ahead of transcription (bounds memory: 4 bytes a sample, 16 kHz).
DECODE_AHEAD_S = 600.0

# Plan columns that describe the unit itself; any other column came from a manifest.
PLAN_COLUMNS = ("shard", "unit_id", "uri", "size_bytes", "est_audio_s", "start_s", "end_s", "split")


@dataclass(frozen=True)
class WorkerConfig:
    """What every actor needs; built once on the driver."""

    output: str
    whisper: WhisperOptions
    threads: int
    model_name: str
    model_sha256: str
    fingerprint: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    unit_timeout_s: float | None = None
    # A multilingual model that names the language of doubtful transcripts of an
    # English-only model (the `language_mismatch` flag); None: no such check.
    language_check: str | None = None
    # The driver's lease (pipeline.lease): parts are written only while it holds the
    # folder, and every marker records it.
    lease_owner: str | None = None

    def transcribe_budget_s(self, audio_s: float) -> float:
        """Time a unit of `audio_s` seconds may take to transcribe."""
        if self.unit_timeout_s is not None:
            return self.unit_timeout_s
        return DEFAULT_TIMEOUT_BASE_S + DEFAULT_TIMEOUT_PER_AUDIO_S * audio_s


@dataclass(frozen=True)
class ShardResult:
    """What the driver learns of one shard, for progress and the summary."""

    shard: int
    attempt: int
    skipped: bool
    committed: bool
    units: int
    ok: int
    no_speech: int
    failed: int
    audio_s: float
    wall_s: float
    node: str
    peak_rss_mb: float | None = None
    # Not written: the driver's lease was taken over by another run meanwhile.
    lease_lost: bool = False


def encode_units(table: pa.Table) -> bytes:
    """A shard's plan rows as Arrow IPC bytes: types (manifest columns too) survive the trip."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def decode_units(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(blob).read_all()


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
) -> ShardResult:
    """Transcribe every unit of `shard`, write both parts, then commit the shard."""
    marker = store.read_marker(shard)
    if marker is not None:
        # At-least-once execution: an earlier attempt already committed this shard.
        return _result_from_marker(shard, marker, skipped=True)
    attempt = store.next_attempt(shard, {"node": node, "pid": os.getpid()})
    started = time.time()
    shard_pause()
    file_rows: list[dict[str, Any]] = []
    segment_rows: list[dict[str, Any]] = []
    for row, segments in transcribe_units(_unit_dicts(units), shard, transcriber, config, attempt=attempt, node=node):
        file_rows.append(row)
        segment_rows.extend(segments)
    if (marker := store.read_marker(shard)) is not None:
        # Another attempt (a retry while this one was thought lost) committed meanwhile:
        # leave its parts alone rather than replace them with equivalent ones.
        return _result_from_marker(shard, marker, skipped=True)
    gate("before_parts_write")
    if not _may_write(store, config, shard):
        return _lease_lost(shard, attempt, file_rows, node)
    marker = _write_parts(shard, units, file_rows, segment_rows, store, config, attempt, started, node)
    committed = store.commit(shard, marker)
    return _result_from_marker(shard, marker, skipped=False, committed=committed)


def retry_failed_units(
    shard: int,
    units: pa.Table,
    transcriber: Transcriber,
    store: OutputStore,
    config: WorkerConfig,
    node: str,
) -> ShardResult:
    """Transcribe again the units of a committed shard that failed, and recommit it.

    The other units keep their rows as they are. Both parts are rewritten and the
    marker replaced (the caller holds the folder's lease); `_retry/NNNNNN.json`,
    written before, is removed only once the new marker is in place, so an
    interrupted retry is redone by the next `retry-failed`.
    """
    started = time.time()
    old_files = store.read_parquet(store.part_path("files", shard))
    old_segments = store.read_parquet(store.part_path("segments", shard))
    old_rows = {r["unit_id"]: r for r in old_files.select(FILES_SCHEMA.names).to_pylist()}
    failed = {uid for uid, r in old_rows.items() if r["status"] == "failed"}
    attempt = store.next_attempt(shard)
    todo = [u for u in _unit_dicts(units) if u["unit_id"] in failed]
    new_rows: dict[str, dict[str, Any]] = {}
    new_segments: dict[str, list[dict[str, Any]]] = {}
    for row, segments in transcribe_units(todo, shard, transcriber, config, attempt=attempt, node=node):
        new_rows[row["unit_id"]], new_segments[row["unit_id"]] = row, segments
    file_rows = [new_rows.get(uid, old_rows[uid]) for uid in units.column("unit_id").to_pylist()]
    segment_rows = [r for r in old_segments.to_pylist() if r["unit_id"] not in new_segments]
    segment_rows += [r for rows in new_segments.values() for r in rows]
    order = {uid: i for i, uid in enumerate(units.column("unit_id").to_pylist())}
    segment_rows.sort(key=lambda r: (order[r["unit_id"]], r["segment"]))
    if not _may_write(store, config, shard):
        return _lease_lost(shard, attempt, file_rows, node)
    marker = _write_parts(shard, units, file_rows, segment_rows, store, config, attempt, started, node)
    store.write_json(store.marker_path(shard), marker)
    store.delete(retry_intent_path(store, shard))
    # This run transcribed the retried units only; the shard's other audio is old work.
    retried_s = sum(r["duration_s"] or 0.0 for r in new_rows.values())
    return dataclasses.replace(_result_from_marker(shard, marker, skipped=False, committed=True), audio_s=retried_s)


def _may_write(store: OutputStore, config: WorkerConfig, shard: int) -> bool:
    """Whether the run that sent this shard still holds the folder. Another run that took
    the lease over may be writing this very shard: parts written now could replace its
    committed ones with different timings (one read per shard; the window left is the
    moment between this read and the writes)."""
    if config.lease_owner is None or lease.holds(store, config.lease_owner):
        return True
    logger.error("the lease of %s was taken over by another run: shard %06d is not written", store.uri(), shard)
    return False


def _lease_lost(shard: int, attempt: int, file_rows: list[dict[str, Any]], node: str) -> ShardResult:
    return ShardResult(shard=shard, attempt=attempt, skipped=True, committed=False, units=len(file_rows), ok=0,
                       no_speech=0, failed=0, audio_s=0.0, wall_s=0.0, node=node, lease_lost=True)


def _unit_dicts(units: pa.Table) -> list[dict[str, Any]]:
    columns = ["unit_id", "uri", "size_bytes", "est_audio_s", "start_s", "end_s"]
    if "split" in units.column_names:
        columns.append("split")
    return units.select(columns).to_pylist()


def retry_intent_path(store: OutputStore, shard: int) -> str:
    return store.path("_retry", f"{shard:06d}.json")


def _write_parts(
    shard: int,
    units: pa.Table,
    file_rows: list[dict[str, Any]],
    segment_rows: list[dict[str, Any]],
    store: OutputStore,
    config: WorkerConfig,
    attempt: int,
    started: float,
    node: str,
) -> dict[str, Any]:
    """Write both parts of `shard`; return the marker that commits them."""
    extra = units.drop_columns([c for c in units.column_names if c in PLAN_COLUMNS])
    files = files_table(file_rows, extra if extra.num_columns else None)
    parts = {
        "segments": store.write_part("segments", shard, segments_table(segment_rows)),
        "files": store.write_part("files", shard, files),
    }
    crashpoint("after_parts_write")
    finished = time.time()
    return {
        "shard": shard,
        "attempt": attempt,
        "fingerprint": config.fingerprint,
        "node": node,
        "lease": config.lease_owner,
        "parts": parts,
        "units": len(file_rows),
        "statuses": {s: sum(r["status"] == s for r in file_rows) for s in STATUSES},
        "flags": {f: sum(f in (r.get("flags") or ()) for r in file_rows) for f in quality.FLAGS},
        "decode_warnings": sum(r.get("decode_warning") is not None for r in file_rows),
        "audio_s": sum(r["duration_s"] or 0.0 for r in file_rows),
        "decode_s": sum(r["decode_s"] or 0.0 for r in file_rows),
        "transcribe_s": sum(r["transcribe_s"] or 0.0 for r in file_rows),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "wall_s": finished - started,
        # The actor process's peak resident memory so far (ffmpeg not included).
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _result_from_marker(shard: int, marker: dict[str, Any], skipped: bool, committed: bool = False) -> ShardResult:
    statuses = marker["statuses"]
    return ShardResult(
        shard=shard,
        attempt=marker["attempt"],
        skipped=skipped,
        committed=committed,
        units=marker["units"],
        ok=statuses.get("ok", 0),
        no_speech=statuses.get("no_speech", 0),
        failed=statuses.get("failed", 0),
        audio_s=marker["audio_s"],
        wall_s=marker["wall_s"],
        node=marker["node"],
        peak_rss_mb=marker.get("peak_rss_mb"),
    )


def transcribe_units(
    units: list[dict[str, Any]],
    shard: int,
    transcriber: Transcriber,
    config: WorkerConfig,
    *,
    attempt: int,
    node: str,
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Decode and transcribe `units`, in order: for each, its `files` row and segment rows.

    One thread decodes ahead (ffmpeg runs in its own process) while this one transcribes,
    so the CPU does not wait for decoding. Each unit is transcribed alone, so what was
    decoded ahead never changes a transcript. Every failure that belongs to one file
    (missing, unreadable, not audio, no audio stream, rejected by the model, over its
    time limit) becomes a `failed` row with its type and message.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkscribe-decode") as pool:
        for unit, row, decoded in _decode_ahead(units, shard, config, attempt, node, pool):
            if decoded is None:
                yield row, []
            else:
                yield _transcribe_unit(unit, row, decoded, shard, transcriber, config)


def _decode_ahead(units, shard, config, attempt, node, pool) -> Iterator[tuple[dict, dict, audio.Decoded | None]]:
    """`decode_unit` of every unit, in order, computed up to `DECODE_AHEAD_S` of audio ahead."""
    pending: deque = deque()
    queued_s = 0.0
    for unit in units:
        est = unit["est_audio_s"]
        while pending and queued_s + est > DECODE_AHEAD_S:
            future, s = pending.popleft()
            queued_s -= s
            yield future.result()
        pending.append((pool.submit(decode_unit, unit, shard, config, attempt, node), est))
        queued_s += est
    while pending:
        yield pending.popleft()[0].result()


def decode_unit(
    unit: dict[str, Any], shard: int, config: WorkerConfig, attempt: int, node: str
) -> tuple[dict[str, Any], dict[str, Any], audio.Decoded | None]:
    """Decode one unit (the window that `windows.cut` gives for a split file).

    Returns:
        The unit, its `files` row so far, and the decoded audio; None instead of the
        audio when the row is already final (failed, or no audio at all).
    """
    row: dict[str, Any] = {
        "unit_id": unit["unit_id"],
        "uri": unit["uri"],
        "shard": shard,
        "status": "failed",
        "error_type": None,
        "error_message": None,
        "decode_warning": None,
        "flags": [],
        "attempts": attempt,
        "size_bytes": unit["size_bytes"],
        "start_s": unit["start_s"] or 0.0,
        "end_s": unit["end_s"],
        "duration_s": None,
        "language": None,
        "language_probability": None,
        "segments": 0,
        "decode_s": None,
        "transcribe_s": None,
        "rtfx": None,
        "node": node,
        "model": config.model_name,
        "compute_type": config.whisper.compute_type,
        "cpu_threads": config.threads,
        "finished_at": None,
    }
    t0 = time.perf_counter()
    timeout_s = config.unit_timeout_s or DECODE_TIMEOUT_S
    try:
        if unit.get("split"):
            row["start_s"], row["end_s"] = windows.cut(
                unit["uri"], row["start_s"], row["end_s"], config.storage_options, timeout_s
            )
        decoded = audio.decode(
            unit["uri"],
            start_s=row["start_s"],
            end_s=row["end_s"],
            storage_options=config.storage_options,
            timeout_s=timeout_s,
        )
    except audio.DecodeError as exc:
        return unit, _failed(row, exc.error_type, str(exc), t0), None
    except FileNotFoundError as exc:
        return unit, _failed(row, "not_found", f"{unit['uri']}: {exc.strerror or exc}", t0), None
    except PermissionError as exc:
        return unit, _failed(row, "permission_denied", f"{unit['uri']}: {exc.strerror or exc}", t0), None
    except IsADirectoryError as exc:
        return unit, _failed(row, "not_a_file", f"{unit['uri']}: {exc.strerror or exc}", t0), None
    row["decode_s"] = time.perf_counter() - t0
    # Milliseconds, like segment times: a segment then never ends after its file.
    row["duration_s"] = round(decoded.duration_s, 3)
    row["decode_warning"] = decoded.warning
    if len(decoded.samples) == 0:
        return unit, _finish(row, "no_speech"), None
    return unit, row, decoded


def _transcribe_unit(unit, row, decoded: audio.Decoded, shard, transcriber, config) -> tuple[dict, list[dict]]:
    started = time.perf_counter()
    budget_s = config.transcribe_budget_s(decoded.duration_s)
    try:
        transcript = transcriber.transcribe(decoded.samples, deadline=time.monotonic() + budget_s)
    except UnitTimeout as exc:
        row["transcribe_s"] = time.perf_counter() - started
        return _failed(row, "timeout", f"{exc} ({budget_s:.0f}s for {decoded.duration_s:.0f}s of audio)", started), []
    except (RuntimeError, ValueError) as exc:
        # CTranslate2 and faster-whisper report a bad input this way; anything else is ours.
        logger.exception("transcription of %s failed", unit["uri"])
        row["transcribe_s"] = time.perf_counter() - started
        return _failed(row, "transcribe_error", f"{type(exc).__name__}: {exc}", started), []
    row["transcribe_s"] = time.perf_counter() - started
    languages = (lambda: transcriber.languages(decoded.samples)) if transcriber.checks_language else None
    return _rows(unit, row, transcript, shard, config, languages=languages)


def _rows(
    unit, row, transcript: Transcript, shard: int, config: WorkerConfig, *, languages=None
) -> tuple[dict, list[dict]]:
    segments = transcript.segments
    if quality.is_no_speech(segments, config.whisper):
        return _finish(row, "no_speech"), []
    row["language"] = transcript.language
    row["language_probability"] = transcript.language_probability
    row["segments"] = len(segments)
    row["flags"] = list(quality.flags(transcript, languages=languages))
    offset = row["start_s"]
    seg_rows = [
        {
            "unit_id": unit["unit_id"],
            "uri": unit["uri"],
            "shard": shard,
            "segment": i,
            # Milliseconds: what the timestamps mean, without float noise (9.599999999999998).
            "start": round(offset + s.start, 3),
            "end": round(offset + s.end, 3),
            "text": s.text,
            "avg_logprob": s.avg_logprob,
            "no_speech_prob": s.no_speech_prob,
            "compression_ratio": s.compression_ratio,
            "temperature": s.temperature,
            "language": transcript.language,
            "words": None if s.words is None else [
                {"start": round(offset + w.start, 3), "end": round(offset + w.end, 3), "word": w.word,
                 "probability": w.probability}
                for w in s.words
            ],
        }
        for i, s in enumerate(segments)
    ]
    return _finish(row, "ok"), seg_rows


def _failed(row: dict[str, Any], error_type: str, message: str, t0: float) -> dict[str, Any]:
    row["error_type"] = error_type
    row["error_message"] = message
    if row["decode_s"] is None:
        row["decode_s"] = time.perf_counter() - t0
    return _finish(row, "failed")


def _finish(row: dict[str, Any], status: str) -> dict[str, Any]:
    row["status"] = status
    duration = row["duration_s"]
    busy = (row["decode_s"] or 0.0) + (row["transcribe_s"] or 0.0)
    if duration and busy > 0:
        row["rtfx"] = duration / busy
    row["finished_at"] = datetime.now(timezone.utc)
    return row


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


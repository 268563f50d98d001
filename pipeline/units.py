"""A shard's units, decoded ahead and transcribed several at once into rows.

For every unit (a file, a window of a long file, or one channel of either) this yields
its `files` row and its `segments` rows (`pipeline.schema`). Every failure that belongs
to one file (missing, unreadable, not audio, no audio stream, rejected by the model,
over its time limit) becomes a `failed` row with its type and message; anything else is
a bug and raises.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Iterator

from pipeline import audio, quality, windows
from pipeline.config import WorkerConfig
from pipeline.schema import FileRow, PlanRow, SegmentRow
from pipeline.streams import Stream
from pipeline.transcriber import Transcriber, Transcript, UnitTimeout

logger = logging.getLogger(__name__)

DECODE_TIMEOUT_S = 1800.0
# Audio decoded ahead of transcription (bounds memory: 4 bytes a sample, 16 kHz).
DECODE_AHEAD_S = 600.0

Rows = tuple[FileRow, list[SegmentRow]]


def transcribe_units(
    units: list[PlanRow],
    transcriber: Transcriber,
    config: WorkerConfig,
    *,
    attempt: int,
    node: str,
) -> Iterator[Rows]:
    """Decode and transcribe `units`: for each, its `files` row and segment rows, in the
    order they end.

    One thread decodes ahead (ffmpeg runs in its own process) while `config.batch_size`
    units are transcribed at once, each as a stream of its own that shares only the
    model's decoder calls (`Transcriber.transcribe_many`), so neither what was decoded
    ahead nor what is transcribed beside a unit changes its transcript.
    """
    finished: deque[Rows] = deque()  # units whose row was final before transcription

    def streams() -> Iterator[Stream]:
        for unit, row, decoded in _decode_ahead(units, config, attempt, node, pool):
            if decoded is None:
                finished.append((row, []))
            else:
                yield Stream((unit, row, decoded), decoded.samples, config.transcribe_budget_s(decoded.duration_s))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkscribe-decode") as pool:
        for stream, outcome in transcriber.transcribe_many(streams(), config.batch_size):
            while finished:
                yield finished.popleft()
            yield _rows(stream, outcome, transcriber, config)
        while finished:
            yield finished.popleft()


def _decode_ahead(units: list[PlanRow], config: WorkerConfig, attempt: int, node: str,
                  pool: ThreadPoolExecutor) -> Iterator[tuple[PlanRow, FileRow, audio.Decoded | None]]:
    """`decode_window` of every unit, in order, computed up to `DECODE_AHEAD_S` of audio ahead."""
    pending: deque = deque()
    queued_s = 0.0
    for unit in units:
        while pending and queued_s + unit.est_audio_s > DECODE_AHEAD_S:
            future, seconds = pending.popleft()
            queued_s -= seconds
            yield future.result()
        pending.append((pool.submit(decode_window, unit, config, attempt, node), unit.est_audio_s))
        queued_s += unit.est_audio_s
    while pending:
        yield pending.popleft()[0].result()


def new_row(unit: PlanRow, config: WorkerConfig, attempt: int, node: str) -> FileRow:
    """The `files` row of `unit` before anything is known of its audio."""
    return FileRow(
        unit_id=unit.unit_id,
        uri=unit.uri,
        shard=unit.shard,
        attempts=attempt,
        size_bytes=unit.size_bytes,
        start_s=unit.start_s or 0.0,
        end_s=unit.end_s,
        node=node,
        model=config.model_name,
        compute_type=config.whisper.compute_type,
        cpu_threads=config.threads,
        channel=unit.channel,
    )


def decode_window(
    unit: PlanRow, config: WorkerConfig, attempt: int, node: str
) -> tuple[PlanRow, FileRow, audio.Decoded | None]:
    """Decode one unit with ffmpeg (for a window of a split file, from the seams that
    `windows.cut` moves to silence).

    Returns:
        The unit, its `files` row so far, and the decoded audio; None instead of the
        audio when the row is already final (failed, or no audio at all).
    """
    row = new_row(unit, config, attempt, node)
    started = time.perf_counter()
    timeout_s = config.unit_timeout_s or DECODE_TIMEOUT_S
    try:
        if unit.split:
            row.start_s, row.end_s = windows.cut(unit.uri, row.start_s, row.end_s, config.storage_options, timeout_s)
        decoded = audio.decode(unit.uri, start_s=row.start_s, end_s=row.end_s,
                               storage_options=config.storage_options, timeout_s=timeout_s, channel=unit.channel)
        if unit.channel:  # dual mono: a channel that repeats channel 0 is not transcribed twice
            first = audio.decode(unit.uri, start_s=row.start_s, end_s=row.end_s,
                                 storage_options=config.storage_options, timeout_s=timeout_s, channel=0)
            if audio.same_signal(decoded.samples, first.samples):
                row.same_as_channel = 0
    except audio.DecodeError as exc:
        return unit, _failed(row, exc.error_type, str(exc), started), None
    except FileNotFoundError as exc:
        return unit, _failed(row, "not_found", f"{unit.uri}: {exc.strerror or exc}", started), None
    except PermissionError as exc:
        return unit, _failed(row, "permission_denied", f"{unit.uri}: {exc.strerror or exc}", started), None
    except IsADirectoryError as exc:
        return unit, _failed(row, "not_a_file", f"{unit.uri}: {exc.strerror or exc}", started), None
    except OSError as exc:
        if audio.local_path(unit.uri) is None:
            raise  # storage failing after its retries stops the run (it may be the network's)
        # A local file the system will not read (a symlink loop, an I/O error): its own fault.
        return unit, _failed(row, "unreadable", f"{unit.uri}: {exc.strerror or exc}", started), None
    row.decode_s = time.perf_counter() - started
    # Milliseconds, like segment times: a segment then never ends after its file.
    row.duration_s = round(decoded.duration_s, 3)
    row.decode_warning = decoded.warning
    if len(decoded.samples) == 0:
        return unit, _finish(row, "no_speech"), None
    if row.same_as_channel is not None:
        return unit, _finish(row, "ok"), None  # its transcript is channel 0's
    return unit, row, decoded


def _rows(stream: Stream, outcome: Transcript | Exception, transcriber: Transcriber, config: WorkerConfig) -> Rows:
    """The rows of a transcribed unit. `transcribe_s` is its wall time as one of the
    streams transcribed at once."""
    unit, row, decoded = stream.tag
    row.transcribe_s = stream.ended - stream.started
    if isinstance(outcome, UnitTimeout):
        budget_s = stream.budget_s
        return _failed(row, "timeout", f"{outcome} ({budget_s:.0f}s for {decoded.duration_s:.0f}s of audio)"), []
    if isinstance(outcome, (RuntimeError, ValueError)):
        # What CTranslate2 and faster-whisper raise for an input they reject (bad
        # samples, a sequence the model cannot take).
        logger.error("transcription of %s failed: %s: %s", unit.uri, type(outcome).__name__, outcome)
        return _failed(row, "transcribe_error", f"{type(outcome).__name__}: {outcome}"), []
    if isinstance(outcome, Exception):
        raise outcome  # anything else is a bug
    transcript = outcome
    if not transcriber.checks_language:
        return transcript_rows(row, transcript, config)
    rows = transcript_rows(row, transcript, config, languages=lambda: transcriber.languages(decoded.samples))
    if config.whisper.other_languages == "route" and quality.LANGUAGE_MISMATCH in row.flags:
        return _routed(row, decoded, transcriber, config)
    return rows


def _routed(row: FileRow, decoded: audio.Decoded, transcriber: Transcriber, config: WorkerConfig) -> Rows:
    """The rows of a unit in another language, transcribed again by the language-check
    model in its own language (with a time limit of its own); `model` names it."""
    started = time.perf_counter()
    row.model, row.flags, row.segments = config.language_check, [], 0
    row.language = row.language_probability = None
    try:
        transcript = transcriber.in_own_language(decoded.samples,
                                                 time.monotonic() + config.transcribe_budget_s(decoded.duration_s))
    except UnitTimeout as exc:
        return _failed(row, "timeout", f"{exc} (transcribing it in its own language)"), []
    except (RuntimeError, ValueError) as exc:
        return _failed(row, "transcribe_error", f"{type(exc).__name__}: {exc}"), []
    finally:
        row.transcribe_s = (row.transcribe_s or 0.0) + time.perf_counter() - started
    return transcript_rows(row, transcript, config)


def transcript_rows(row: FileRow, transcript: Transcript, config: WorkerConfig, *,
                    languages: Callable[[], dict[str, float]] | None = None) -> Rows:
    """The final `files` row and the segment rows of a unit whose transcript is known."""
    segments = transcript.segments
    if quality.is_no_speech(segments, config.whisper):
        return _finish(row, "no_speech"), []
    row.language = transcript.language
    row.language_probability = transcript.language_probability
    row.segments = len(segments)
    row.flags = list(quality.flags(transcript, languages=languages))
    offset = row.start_s
    segment_rows = [
        SegmentRow(
            unit_id=row.unit_id,
            uri=row.uri,
            shard=row.shard,
            segment=number,
            # Milliseconds: what the timestamps mean, without float noise (9.599999999999998).
            start=round(offset + s.start, 3),
            end=round(offset + s.end, 3),
            text=s.text,
            avg_logprob=s.avg_logprob,
            no_speech_prob=s.no_speech_prob,
            compression_ratio=s.compression_ratio,
            temperature=s.temperature,
            language=transcript.language,
            channel=row.channel,
            words=None if s.words is None else [
                {"start": round(offset + w.start, 3), "end": round(offset + w.end, 3), "word": w.word,
                 "probability": w.probability}
                for w in s.words
            ],
        )
        for number, s in enumerate(segments)
    ]
    return _finish(row, "ok"), segment_rows


def _failed(row: FileRow, error_type: str, message: str, started: float | None = None) -> FileRow:
    row.error_type = error_type
    row.error_message = message
    if row.decode_s is None and started is not None:
        row.decode_s = time.perf_counter() - started
    return _finish(row, "failed")


def _finish(row: FileRow, status: str) -> FileRow:
    row.status = status
    busy = (row.decode_s or 0.0) + (row.transcribe_s or 0.0)
    if row.duration_s and busy > 0:
        row.rtfx = row.duration_s / busy
    row.finished_at = datetime.now(timezone.utc)
    return row

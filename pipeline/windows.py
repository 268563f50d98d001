"""Long files become several units: windows transcribed by different actors.

The planner cuts a file of 1.5 windows or more at nominal boundaries k x window_s; each
window is a unit of its own, planned into shards like any unit (so the windows of one
file run on several actors at once, and those of several files may share a shard). The
actor that takes a window moves each nominal boundary to the middle of the longest
silence within `SEAM_MARGIN_S` of it, found by Silero VAD on exactly that stretch of
audio. Both neighbours decode the same stretch with the same command, so they find the
same cut: no word at a seam is lost or transcribed twice, and each window is decoded
on its own (ffmpeg -ss/-t), so memory does not grow with the file.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import audio, inputs
from pipeline.durations import MIN_BYTES_PER_S, local_duration, plausible, remote_durations

logger = logging.getLogger(__name__)

# A file is split only if it is at least this many windows long.
SPLIT_AT_WINDOWS = 1.5
SEAM_MARGIN_S = 8.0
# ffprobe processes at once: each waits on the disk as much as it computes.
PROBES_AT_ONCE = 2 * len(os.sched_getaffinity(0))
_FRAME_S = 0.02


def split_long(units: pa.Table, window_s: float | None, timeout_s: float = 60.0,
               storage_options: dict | None = None) -> pa.Table:
    """`units` with each long file replaced by its windows (column `split` true), and the
    duration of each file measured (or given) in `duration_s`.

    A file's duration is the manifest's (`duration_s`) where it gives one; otherwise a
    file whose size says it may be long is measured from its header bytes, several at
    once (`durations`: a read or two, ranged on a remote file, never the whole file). In
    a container `durations` does not know, a local file is measured by ffmpeg (it reads
    the header) and a remote one stays whole. The windows of a remote file are decoded
    from one copy per node (`audio.cached_copy`). The last window of a file never has an
    end, so a duration that is too short loses nothing.
    """
    if not window_s or units.num_rows == 0:
        return units.append_column("split", pa.array([False] * units.num_rows, pa.bool_()))
    est_limit = SPLIT_AT_WINDOWS * window_s / 4  # sizes only estimate; measure anything close
    rows = units.to_pylist()
    durations: list[float | None] = [None] * len(rows)
    local, remote, unbelieved = [], [], []
    for i, row in enumerate(rows):
        whole = (row["start_s"] or 0.0) == 0.0 and row["end_s"] is None
        if not whole:
            continue
        given = row.get("duration_s")
        if given is not None and not plausible(given, row["size_bytes"]):
            unbelieved.append(row["uri"])
            rows[i] = row = {**row, "duration_s": None}
        if row.get("duration_s") is not None:
            durations[i] = row["duration_s"]
        elif inputs.estimate_audio_s(row["uri"], row["size_bytes"]) >= est_limit:
            if audio.local_path(row["uri"]) is not None:
                local.append(i)
            elif row["size_bytes"]:
                remote.append(i)
    if unbelieved:
        logger.warning("%d file(s) too small for the duration_s the manifest gives (at least %d bytes a second), "
                       "measured instead, e.g. %s", len(unbelieved), MIN_BYTES_PER_S, unbelieved[0])
    measured = remote_durations([rows[i]["uri"] for i in remote], [rows[i]["size_bytes"] for i in remote],
                                storage_options)
    for i, duration in zip(remote, measured):
        durations[i] = duration

    # From the header where it tells; else an ffmpeg process, which spends most of its
    # ~30 ms starting.
    def measure(i: int) -> float | None:
        found = local_duration(audio.local_path(rows[i]["uri"]))
        return found if found is not None else audio.probe_duration(rows[i]["uri"], timeout_s)

    with ThreadPoolExecutor(PROBES_AT_ONCE) as pool:
        for i, duration in zip(local, pool.map(measure, local)):
            durations[i] = duration
    out: list[dict[str, Any]] = []
    for row, duration in zip(rows, durations):
        if duration is not None and not plausible(duration, row["size_bytes"]):
            duration = None  # what ffmpeg made of a garbled header
        if duration is not None:  # balances shards better than the size's guess (plan.estimates)
            row = {**row, "duration_s": duration}
        if duration is None or duration < SPLIT_AT_WINDOWS * window_s:
            out.append({**row, "split": False})
            continue
        count = math.ceil(duration / window_s - 1e-6)
        for k in range(count):
            start = k * window_s
            end = None if k == count - 1 else (k + 1) * window_s
            out.append({**row, "unit_id": inputs.unit_id(row["uri"], start, end), "start_s": start, "end_s": end,
                        "split": True})
    schema = units.schema.append(pa.field("split", pa.bool_()))
    return pa.Table.from_pylist(out, schema=schema)


def cut(uri: str, start_s: float, end_s: float | None, storage_options: dict | None, timeout_s: float) -> tuple[float, float | None]:
    """The window `[start_s, end_s)` with both nominal boundaries moved to silence."""
    start = seam(uri, start_s, storage_options, timeout_s) if start_s > 0 else 0.0
    end = seam(uri, end_s, storage_options, timeout_s) if end_s is not None else None
    return start, end


def seam(uri: str, nominal_s: float, storage_options: dict | None = None, timeout_s: float | None = None) -> float:
    """Where to cut near `nominal_s`: the middle of the longest silence within
    `SEAM_MARGIN_S`, else the quietest 20 ms; deterministic for the same file."""
    from pipeline.engine import speech_regions

    lo = max(0.0, nominal_s - SEAM_MARGIN_S)
    samples = audio.decode(uri, start_s=lo, end_s=nominal_s + SEAM_MARGIN_S,
                           storage_options=storage_options, timeout_s=timeout_s).samples
    n = len(samples)
    if n == 0:
        return nominal_s
    regions = speech_regions(samples, min_silence_ms=100, pad_ms=0)
    edges = [0] + [x for r in regions for x in r] + [n]
    gaps = [(edges[i + 1] - edges[i], edges[i]) for i in range(0, len(edges), 2) if edges[i + 1] > edges[i]]
    # Silence at either end of the stretch may continue beyond it: only inner gaps count,
    # unless the stretch holds no speech at all.
    inner = [(length, at) for length, at in gaps if at > 0 and at + length < n] or ([] if regions else gaps)
    if inner:
        length, at = max(inner, key=lambda g: (g[0], -abs(g[1] + g[0] / 2 - (nominal_s - lo) * audio.SAMPLE_RATE)))
        return lo + (at + length / 2) / audio.SAMPLE_RATE
    frame = int(_FRAME_S * audio.SAMPLE_RATE)
    frames = samples[: n - n % frame].reshape(-1, frame) if n >= frame else samples.reshape(1, -1)
    quietest = int(np.argmin((frames.astype(np.float64) ** 2).mean(axis=1)))
    return lo + (quietest + 0.5) * frames.shape[1] / audio.SAMPLE_RATE

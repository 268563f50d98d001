"""With `--channels split`, each channel of a multi-channel file is a unit of its own.

Call recorders put the agent on one channel and the customer on the other; mixed down,
overlapping speech is lost and who said what is gone. So at plan time the channel count
of every unit's file is read, and a file of N > 1 channels becomes N units (`channel`
0 to N-1, each with a unit id of its own), transcribed, retried and committed like files.
A file of one channel stays one unit with `channel` null (its mixdown is itself).

The count comes from the header where it is cheap to read (WAV, RF64, FLAC: one small
read, ranged on a remote file), else from ffmpeg's description of the file (a local
file in place, a remote one from its first HEAD_BYTES). A file whose count cannot be
read (an MP4 with its index at the end, on an object store) stays one mixed-down unit,
and the planner says how many did.

Dual mono (both channels carrying the same signal, as many recorders write a mono call)
is found when a channel is decoded (`pipeline.units`): a channel that repeats channel 0
is not transcribed again.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from pipeline import audio, durations, inputs

logger = logging.getLogger(__name__)

# Channels above this are not believed (a garbled header must not plan 65,535 units).
MAX_CHANNELS = 64


def split_channels(units: pa.Table, storage_options: dict | None = None) -> pa.Table:
    """`units` with the unit of each multi-channel file replaced by one per channel
    (column `channel`; a window of a long file, by one per channel of that window)."""
    uris = units.column("uri").to_pylist()
    sizes = units.column("size_bytes").to_pylist() if "size_bytes" in units.column_names else [None] * len(uris)
    distinct = dict(zip(uris, sizes))
    with ThreadPoolExecutor(min(durations.READS_AT_ONCE, max(1, len(distinct)))) as pool:
        counts = dict(zip(distinct, pool.map(lambda item: count(item[0], item[1], storage_options), distinct.items())))
    unknown = sum(1 for n in counts.values() if n is None)
    if unknown:
        logger.warning("the channels of %d file(s) could not be read from their headers: each is mixed down to "
                       "mono, as without --channels split", unknown)
    rows = []
    for row in units.to_pylist():
        n = counts[row["uri"]] or 1
        if n == 1:
            rows.append({**row, "channel": None})
            continue
        for channel in range(n):
            rows.append({**row, "channel": channel,
                         "unit_id": inputs.unit_id(row["uri"], row.get("start_s") or 0.0, row.get("end_s"), channel)})
    schema = units.schema.append(pa.field("channel", pa.int16())) if "channel" not in units.column_names else units.schema
    split = pa.Table.from_pylist(rows, schema=schema)
    multi = sum(1 for n in counts.values() if n and n > 1)
    if multi:
        logger.info("%d file(s) of several channels: %d unit(s), one per channel", multi,
                    sum(1 for r in rows if r["channel"] is not None))
    return split


def count(uri: str, size: int | None, storage_options: dict | None = None) -> int | None:
    """The channel count of the file at `uri` (of `size` bytes, if known), or None."""
    path = audio.local_path(uri)
    try:
        if path is not None:
            with open(path, "rb") as f:
                head = f.read(durations.HEAD_BYTES)
            return _from_header(head) or audio.probe_channels(path)
        read = durations.header_reader(uri, storage_options)
        head = read(0, durations.HEAD_BYTES if size is None else min(size, durations.HEAD_BYTES))
    except (OSError, ValueError) as exc:  # unreadable here: the actor reports it, if it is
        logger.debug("no channel count for %s: %s", uri, exc)
        return None
    found = _from_header(head)
    if found is not None:
        return found
    with tempfile.NamedTemporaryFile(prefix="bulkscribe-head-", suffix=os.path.splitext(uri)[1]) as tmp:
        tmp.write(head)
        tmp.flush()
        return audio.probe_channels(tmp.name)


def _from_header(head: bytes) -> int | None:
    """The channel count a WAV (RF64) or FLAC header declares, else None."""
    try:
        kind = durations.container(head)
        if kind == "wav":
            offset = 12
            while offset + 8 <= len(head):
                name, length = head[offset:offset + 4], struct.unpack("<I", head[offset + 4:offset + 8])[0]
                if name == b"fmt ":
                    channels = struct.unpack("<H", head[offset + 10:offset + 12])[0]
                    return channels if 1 <= channels <= MAX_CHANNELS else None
                offset += 8 + length + (length & 1)
            return None
        if kind == "flac" and len(head) >= 8 + 18 and head[4] & 0x7F == 0:
            # STREAMINFO, after the block sizes: 20 bits of sample rate, 3 of channels - 1.
            info = int.from_bytes(head[8 + 10:8 + 18], "big")
            return ((info >> 41) & 0x07) + 1
    except struct.error:
        return None
    return None

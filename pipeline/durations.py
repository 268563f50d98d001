"""How long an audio file is, read from its container's header at plan time.

A long file is split into windows at plan time, which needs its duration. ffmpeg could
measure it (`audio.probe_duration`), but it would download a file from an object store,
and on a local disk each ffmpeg process costs about 30 ms to start: hours of planning
for a million long files. A few reads of at most `HEAD_BYTES` each tell it instead:

- WAV and RF64: the data chunk's size over the byte rate of the format chunk;
- AIFF and AIFF-C: the frame count and sample rate of the COMM chunk;
- FLAC: the sample count of STREAMINFO;
- MP3: the frame count of a Xing/Info or VBRI header, else the first frame's bit rate
  over the size of the rest of the file (constant bit rate);
- Ogg Vorbis and Opus: the granule position of the last page (a read of the file's end);
- MP4, M4A, MOV: the movie header (`mvhd`), before the media data or after it;
- Matroska and WebM: the segment's Duration (ahead of the clusters).

Any other container (AAC in ADTS, ...) or a header that does not parse gives None:
a local file is then measured by ffmpeg, a remote one stays whole, as it would without a
duration. A duration that is too short only makes the last window longer (it runs to the
end of the file); nothing is lost.

Web servers (`http://`, `https://`) may ignore a range, so their files are read from the
start, as a stream, and no further than `STREAM_BYTES`: there Ogg files and MP4 files with
the movie header at the end stay whole.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import fsspec

from pipeline.retry import retry

logger = logging.getLogger(__name__)

HEAD_BYTES = 64 << 10
# Files measured at once: each is one to three small reads, mostly waiting on the network.
READS_AT_ONCE = 32

# What may be read of a file on a web server, from its start (a tag with cover art before
# the first MP3 frame is often a few hundred KB).
STREAM_BYTES = 1 << 20

# The lowest average bit rate believed: 2 kbit/s, below the speech codecs read here (MP3
# goes down to 8, Opus to 6). A duration that would need less is not believed.
MIN_BYTES_PER_S = 250

Reader = Callable[[int, int], bytes]  # bytes [start, end) of the file


def remote_durations(uris: list[str], sizes: list[int], storage_options: dict | None = None) -> list[float | None]:
    """The duration of each remote file (None where its header does not tell), measured
    several at once."""
    def one(item: tuple[str, int]) -> float | None:
        uri, size = item
        try:
            return duration(header_reader(uri, storage_options), size, uri)
        except Exception as exc:  # unreadable here: the actor reports it, if it is
            logger.debug("no duration from the header of %s: %s", uri, exc)
            return None

    if not uris:
        return []
    logger.info("reading the headers of %d remote file(s) to split the long ones", len(uris))
    with ThreadPoolExecutor(min(READS_AT_ONCE, len(uris))) as pool:
        return list(pool.map(one, zip(uris, sizes)))


def local_duration(path: str) -> float | None:
    """The duration of a local file (None where its header does not tell)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a FIFO would block the planner; a device never ends
        with open(path, "rb") as f:
            def read(start: int, end: int) -> bytes:
                f.seek(start)
                return f.read(end - start)

            return duration(read, os.fstat(f.fileno()).st_size, path)
    except OSError:
        return None


def header_reader(uri: str, storage_options: dict | None) -> Reader:
    """Reads of byte ranges of remote `uri`, retried (a web server's file: from its start)."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if {"http", "https"} & set(protocols):
        def from_start(start: int, end: int) -> bytes:
            if end > STREAM_BYTES:
                raise ValueError(f"a web server's file is read in its first {STREAM_BYTES} bytes only")
            chunks, left = [], end
            with fs.open(path, "rb", block_size=0) as f:  # a stream: no range needed
                while left > 0 and (chunk := f.read(left)):
                    chunks.append(chunk)
                    left -= len(chunk)
            return b"".join(chunks)[start:]
        return lambda start, end: retry(lambda: from_start(start, end), f"read the header of {uri}")
    return lambda start, end: retry(lambda: fs.cat_file(path, start=start, end=end), f"read the header of {uri}")


def duration(read: Reader, size: int, name: str = "") -> float | None:
    """The duration in seconds that the header of the file `name` of `size` bytes declares."""
    head = read(0, min(size, HEAD_BYTES))
    try:
        found = _parse(head, read, size, name)
    except (struct.error, IndexError, ZeroDivisionError, OverflowError):  # a header cut short or garbled
        return None
    return found if found is not None and plausible(found, size) else None


def plausible(seconds: float, size: int | None) -> bool:
    """Whether a file of `size` bytes can hold `seconds` of audio: a garbled header (or a
    mistyped manifest row) must not plan a file as a million windows."""
    return math.isfinite(seconds) and seconds >= 0 and (size is None or seconds * MIN_BYTES_PER_S <= size)


def container(head: bytes) -> str | None:
    """The container the first 12 bytes of a file announce: wav, rifx (big-endian WAV,
    not read here), aiff, flac, ogg, mp4 or matroska; None for another (MP3 has no
    reliable mark)."""
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFX":
        return "rifx"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    return None


def _parse(head: bytes, read: Reader, size: int, name: str) -> float | None:
    kind = container(head)
    if kind == "wav":
        return _wav(head, read, size)
    if kind == "aiff":
        return _aiff(head, read, size)
    if kind == "flac":
        return _flac(head)
    if kind == "ogg":
        return _ogg(head, read, size)
    if kind == "mp4":
        return _mp4(head, read, size)
    if kind == "matroska":
        return _matroska(head)
    if head[:3] == b"ID3" or posixpath.splitext(name)[1].lower() in _MPEG_AUDIO:
        return _mp3(head, read, size)
    return None


def _at(head: bytes, read: Reader, size: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`, from `head` where it holds them."""
    if offset + length <= len(head):
        return head[offset:offset + length]
    if offset >= size:  # a chunk or box size that points past the end
        return b""
    return read(offset, min(size, offset + length))


def _wav(head: bytes, read: Reader, size: int) -> float | None:
    byte_rate = data_size = None
    ds64_data = None
    offset = 12
    for _ in range(64):  # chunks before the data: fmt, LIST, bext, iXML, ...
        header = _at(head, read, size, offset, 8)
        if len(header) < 8:
            break
        kind, length = header[:4], struct.unpack("<I", header[4:])[0]
        if kind == b"ds64":
            ds64_data = struct.unpack("<Q", _at(head, read, size, offset + 16, 8))[0]
        elif kind == b"fmt ":
            byte_rate = struct.unpack("<I", _at(head, read, size, offset + 16, 4))[0]
        elif kind == b"data":
            data_size = ds64_data if length == 0xFFFFFFFF and ds64_data is not None else length
            # Unset or wrong sizes (a recording cut short, a stream): what the file holds.
            data_size = min(data_size, size - offset - 8) if data_size else size - offset - 8
            break
        offset += 8 + length + (length & 1)
    if not byte_rate or data_size is None:
        return None
    return data_size / byte_rate


def _aiff(head: bytes, read: Reader, size: int) -> float | None:
    offset = 12
    for _ in range(64):  # chunks before COMM: FVER, NAME, ...
        header = _at(head, read, size, offset, 8)
        if len(header) < 8:
            return None
        kind, length = header[:4], struct.unpack(">I", header[4:])[0]
        if kind == b"COMM":
            comm = _at(head, read, size, offset + 8, 18)
            frames = struct.unpack(">I", comm[2:6])[0]
            # The sample rate is an 80-bit extended float: sign and exponent, then a
            # 64-bit mantissa with its integer bit.
            exponent, mantissa = struct.unpack(">HQ", comm[8:18])
            rate = mantissa * 2.0 ** ((exponent & 0x7FFF) - 16383 - 63)
            return frames / rate if rate > 0 and frames else None
        offset += 8 + length + (length & 1)
    return None


def _flac(head: bytes) -> float | None:
    if len(head) < 8 + 18 or head[4] & 0x7F != 0:  # STREAMINFO is always the first block
        return None
    info = int.from_bytes(head[8 + 10:8 + 18], "big")
    rate, samples = info >> 44, info & ((1 << 36) - 1)
    return samples / rate if rate and samples else None


def _ogg(head: bytes, read: Reader, size: int) -> float | None:
    segments = head[26] if len(head) > 26 else 0
    packet = head[27 + segments:27 + segments + 20]
    serial = head[14:18]
    if packet.startswith(b"\x01vorbis"):
        rate, pre_skip = struct.unpack("<I", packet[12:16])[0], 0
    elif packet.startswith(b"OpusHead"):
        rate, pre_skip = 48000, struct.unpack("<H", packet[10:12])[0]
    else:
        return None
    tail = read(max(0, size - HEAD_BYTES), size)
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        page = tail[at:at + 18]
        if len(page) == 18 and page[14:18] == serial:
            granule = struct.unpack("<q", page[6:14])[0]
            if granule >= 0:
                return max(0, granule - pre_skip) / rate if rate else None
    return None


def _mp4(head: bytes, read: Reader, size: int) -> float | None:
    offset = 0
    for _ in range(64):  # top-level boxes: ftyp, moov, mdat, free, ...
        header = _at(head, read, size, offset, 16)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I", header[:4])[0], header[4:8]
        body = 8
        if length == 1:
            length, body = struct.unpack(">Q", header[8:16])[0], 16
        elif length == 0:
            length = size - offset
        if kind == b"moov":
            return _mvhd(_at(head, read, size, offset + body, min(length - body, HEAD_BYTES)))
        if length < body:
            return None
        offset += length
    return None


def _mvhd(moov: bytes) -> float | None:
    offset = 0
    while offset + 8 <= len(moov):
        length, kind = struct.unpack(">I", moov[offset:offset + 4])[0], moov[offset + 4:offset + 8]
        if kind == b"mvhd":
            box = moov[offset + 8:offset + 8 + 32]
            if box[:1] == b"\x01":
                timescale, duration = struct.unpack(">IQ", box[20:32])
            else:
                timescale, duration = struct.unpack(">II", box[12:20])
            return duration / timescale if timescale and duration not in (0, 0xFFFFFFFF, (1 << 64) - 1) else None
        if length < 8:
            return None
        offset += length
    return None


def _ebml(data: bytes, at: int) -> tuple[int, int, int]:
    """(element id, size or -1 if unknown, offset of its data) of the EBML element at `at`."""
    first = data[at]
    id_length = 1 + (8 - first.bit_length()) if first else 9
    if id_length > 4:
        raise IndexError("not an EBML id")
    element = int.from_bytes(data[at:at + id_length], "big")
    at += id_length
    length = 1 + (8 - data[at].bit_length()) if data[at] else 9
    if length > 8:
        raise IndexError("not an EBML size")
    value = int.from_bytes(data[at:at + length], "big") & ((1 << (7 * length)) - 1)
    return element, -1 if value == (1 << (7 * length)) - 1 else value, at + length


_SEGMENT, _INFO, _CLUSTER, _TIMESTAMP_SCALE, _DURATION = 0x18538067, 0x1549A966, 0x1F43B675, 0x2AD7B1, 0x4489


def _matroska(head: bytes) -> float | None:
    """Matroska and WebM: the Duration of the segment's Info (in the first KB, ahead of
    the clusters, as muxers write it)."""
    at, end = 0, len(head)
    while at < end:
        element, length, body = _ebml(head, at)
        if element == _SEGMENT:
            at, end = body, end if length < 0 else min(end, body + length)
            continue
        if element == _CLUSTER or length < 0:
            return None
        if element == _INFO:
            scale, duration, inner = 1_000_000, None, body
            while inner < min(end, body + length):
                child, child_length, child_body = _ebml(head, inner)
                value = head[child_body:child_body + child_length]
                if child == _TIMESTAMP_SCALE:
                    scale = int.from_bytes(value, "big")
                elif child == _DURATION and child_length in (4, 8):
                    duration = struct.unpack(">f" if child_length == 4 else ">d", value)[0]
                inner = child_body + child_length
            return duration * scale / 1e9 if duration and duration > 0 else None
        at = body + length
    return None


# MP3 frame headers: bit rates (kbit/s) by (MPEG-1 or not, layer), sample rates by version.
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_AUDIO = {".mp3", ".mp2", ".mp1", ".mpa", ".mpga"}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _frame(data: bytes, at: int) -> tuple[int, int, int, int, bool, bool] | None:
    """(bit rate in bit/s, sample rate, samples per frame, frame length, MPEG-1, mono) of
    an MP3 frame header at `at`, or None if none is there."""
    if at + 4 > len(data) or data[at] != 0xFF or data[at + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (data[at + 1] >> 3) & 3, 4 - ((data[at + 1] >> 1) & 3)
    rate_index, sample_index = data[at + 2] >> 4, (data[at + 2] >> 2) & 3
    if version == 1 or layer == 4 or rate_index in (0, 15) or sample_index == 3:
        return None
    mpeg1 = version == 3
    bitrate = _BITRATES[(mpeg1, layer)][rate_index] * 1000
    sample_rate = _SAMPLE_RATES[version][sample_index]
    padding = (data[at + 2] >> 1) & 1
    if layer == 1:
        samples, length = 384, (12 * bitrate // sample_rate + padding) * 4
    else:
        samples = 1152 if mpeg1 or layer == 2 else 576
        length = samples // 8 * bitrate // sample_rate + padding
    return bitrate, sample_rate, samples, length, mpeg1, data[at + 3] >> 6 == 3


def _followed(data: bytes, at: int, frames: int) -> bool:
    """Whether `frames` frames follow at `at` (as far as `data` goes)."""
    for _ in range(frames):
        if at + 4 > len(data):
            return True
        frame = _frame(data, at)
        if frame is None:
            return False
        at += frame[3]
    return True


def _mp3(head: bytes, read: Reader, size: int) -> float | None:
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:  # a tag first, cover art and all
        tag = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
        start = 10 + tag + (10 if head[5] & 0x10 else 0)
    data = _at(head, read, size, start, 16 << 10)
    for at in range(max(0, len(data) - 4)):
        frame = _frame(data, at)
        # A sync word can occur by chance: a real frame is followed by two more.
        if frame is None or not _followed(data, at + frame[3], 2):
            continue
        bitrate, sample_rate, samples, _, mpeg1, mono = frame
        side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
        xing = data[at + 4 + side:at + 4 + side + 12]
        if xing[:4] in (b"Xing", b"Info") and len(xing) == 12 and struct.unpack(">I", xing[4:8])[0] & 1:
            return struct.unpack(">I", xing[8:12])[0] * samples / sample_rate
        vbri = data[at + 36:at + 36 + 18]
        if vbri[:4] == b"VBRI" and len(vbri) == 18:
            return struct.unpack(">I", vbri[14:18])[0] * samples / sample_rate
        return (size - start - at) * 8 / bitrate
    return None

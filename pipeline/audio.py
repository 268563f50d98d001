"""Decode any audio or video container to 16 kHz mono float32 with ffmpeg.

ffmpeg-python builds the command; the binary is the one the imageio-ffmpeg wheel ships
(or $BULKSCRIBE_FFMPEG / $IMAGEIO_FFMPEG_EXE), so no system package is needed. Samples
come back through a pipe. File names are passed as arguments, never through a shell,
and with ffmpeg's `file:` prefix so that a name starting with `-` or holding `:` is
still a name. We do not use PyAV's whole-file `decode_audio`: it peaked at 1.7 GB on a
3-hour mp3, where ffmpeg's output is 2 bytes a sample, 4 once converted (690 MB for 3 hours).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import fsspec
import numpy as np

from pipeline.retry import retry

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
_STDERR_CHARS = 2_000
# A decoded length this much shorter than the container's is worth a warning.
GAP_TOLERANCE_S = 0.5
GAP_TOLERANCE_SHARE = 0.02
# With -loglevel level+info ffmpeg tags each line: "[in#0 @ 0x55..] [error] moov atom not found".
_ERROR_LINE = re.compile(r"\[(?:error|fatal|panic)\] (.*)$")
_COPY_CHUNK = 1 << 22
# The node's cache of remote files split into windows (`cached_copy`): its folder,
# its size, and how long a copy must have been idle before it may be removed (a window
# being decoded refreshes its copy's time).
CACHE_ENV = "BULKSCRIBE_AUDIO_CACHE"
CACHE_BYTES = 20 << 30
CACHE_IDLE_S = 3600.0
_VIDEO_STREAM = re.compile(r"Stream #\d+:\d+.*: Video: (?!mjpeg|png)")


class DecodeError(RuntimeError):
    """A source cannot be decoded; `error_type` names the kind for the `files` table."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def ffmpeg_exe() -> str:
    """The ffmpeg binary: $BULKSCRIBE_FFMPEG if set, else imageio-ffmpeg's."""
    override = os.environ.get("BULKSCRIBE_FFMPEG")
    if override:
        return override
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class Decoded:
    """Decoded samples, with what ffmpeg said about the source.

    `warning` is set when the decoded audio is shorter than the container says
    (garbage in the middle, a truncated file) or ffmpeg reported decode errors.
    """

    samples: np.ndarray
    container_s: float | None
    warning: str | None

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def local_path(uri: str) -> str | None:
    """The local path of `uri`, or None if it is not local. Non-UTF-8 names travel as
    percent-encoded `file://` URLs (see `pipeline.inputs.canonical_uri`)."""
    if uri.startswith("file://"):
        return os.fsdecode(unquote_to_bytes(uri[len("file://"):]))
    return uri if "://" not in uri else None


def decode(
    uri: str,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    storage_options: dict | None = None,
    timeout_s: float | None = None,
    channel: int | None = None,
) -> Decoded:
    """Decode `[start_s, end_s)` of `uri` to 16 kHz mono float32: all its channels mixed
    down, or only `channel` (0 for the first).

    Local files are read by ffmpeg in place. Other URLs are first copied, in chunks,
    to a local temporary file (containers such as mp4 keep their index at the end and
    cannot be decoded from a pipe); for a window of a file, to the node's cache
    (`cached_copy`), where its other windows find it.

    Raises:
        DecodeError: with `error_type` `empty_file`, `no_audio_stream`, `decode_error`,
            `not_a_file` or `timeout`, and ffmpeg's own message.
        FileNotFoundError, PermissionError: from the storage layer, unchanged.
    """
    path = local_path(uri)
    if path is not None:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder", path)
        if not stat.S_ISREG(mode):
            # Opening a FIFO would wait for a writer for ever; a device may never end.
            raise DecodeError("not_a_file", f"{uri} is not a regular file (a FIFO, socket or device); not read")
        # Fail the way a remote read would, before ffmpeg turns it into a vaguer message.
        with open(path, "rb") as f:
            if not f.read(1):
                raise DecodeError("empty_file", f"{uri} is empty (0 bytes)")
        return _run_ffmpeg(path, start_s, end_s, timeout_s, channel)
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    info = retry(lambda: fs.info(path), f"stat {uri}")
    if info.get("size") == 0:
        raise DecodeError("empty_file", f"{uri} is empty (0 bytes)")
    suffix = posixpath.splitext(path)[1]
    if start_s > 0 or end_s is not None or channel is not None:
        # A window (or the stretch around a seam) of a long remote file, or one of its
        # channels: its other windows, seams and channels will want the same bytes.
        return _run_ffmpeg(cached_copy(fs, path, uri, info), start_s, end_s, timeout_s, channel)
    with tempfile.NamedTemporaryFile(prefix="bulkscribe-", suffix=suffix) as tmp:
        _download(fs, path, uri, tmp)
        return _run_ffmpeg(tmp.name, start_s, end_s, timeout_s)


def _download(fs: fsspec.AbstractFileSystem, path: str, uri: str, dst) -> None:
    """Copy the remote file into the open binary file `dst`, in chunks; a retry starts over."""

    def copy() -> None:
        dst.seek(0)
        dst.truncate()
        with fs.open(path, "rb") as src:
            shutil.copyfileobj(src, dst, _COPY_CHUNK)
        dst.flush()

    retry(copy, f"download {uri}")


def cache_dir() -> str:
    """The node's cache of remote files being decoded window by window."""
    return os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "bulkscribe-audio-cache")


def cached_copy(fs: fsspec.AbstractFileSystem, path: str, uri: str, info: dict) -> str:
    """A local copy of the remote file `uri`, downloaded once per node and version.

    The copy is named by the URI, size and ETag (or modification time), so a file
    replaced in the store is fetched again, never decoded from a stale copy. Actors of
    one node wait for each other's download (a lock file), so a file split in ten
    windows is downloaded once, not once per window and seam. Copies not used for
    `CACHE_IDLE_S` are removed once the cache holds more than `CACHE_BYTES`.
    """
    version = [uri, info.get("size")] + [str(info[k]) for k in ("ETag", "etag", "mtime", "LastModified") if k in info]
    key = hashlib.sha256(json.dumps(version).encode()).hexdigest()[:32]
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, key + posixpath.splitext(path)[1])
    with open(os.path.join(folder, key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(target):
            os.utime(target)  # in use: not the next to go
            return target
        _make_room(folder, info.get("size") or 0)
        partial = f"{target}.{os.getpid()}.part"
        try:
            with open(partial, "wb") as dst:
                _download(fs, path, uri, dst)
            os.replace(partial, target)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    logger.info("downloaded %s into the node's cache (%s)", uri, target)
    return target


def _make_room(folder: str, incoming: int) -> None:
    """Remove idle copies, oldest first, until `incoming` more bytes fit in `CACHE_BYTES`."""
    entries = []
    for entry in os.scandir(folder):
        if entry.name.endswith((".lock", ".part")):
            continue
        stat = entry.stat()
        entries.append((stat.st_mtime, stat.st_size, entry.path))
    used = sum(size for _, size, _ in entries)
    now = time.time()
    for mtime, size, name in sorted(entries):
        if used + incoming <= CACHE_BYTES or now - mtime < CACHE_IDLE_S:
            break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
            used -= size


def probe_duration(uri: str, timeout_s: float | None = 60.0) -> float | None:
    """The duration a local file's container declares (ffmpeg reads its header only),
    or None if it cannot tell."""
    path = local_path(uri)
    description = None if path is None else _describe(path, timeout_s)
    return None if description is None else _container_seconds(description)


def _describe(path: str, timeout_s: float | None) -> str | None:
    """ffmpeg's description of local file `path` (`ffmpeg -i`: it reads the header only),
    None if ffmpeg could not be run in time."""
    try:
        done = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", _ffmpeg_source(path)],
                              capture_output=True, timeout=timeout_s, check=False)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return done.stderr.decode("utf-8", "replace")


# "Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 8000 Hz, stereo, s16, 256 kb/s"
_AUDIO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Audio: .*?, \d+ Hz, ([^,]+)")
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6,
                    "6.1": 7, "7.1": 8, "downmix": 2}


def channels_in(stderr: str) -> int | None:
    """The channel count of the first audio stream in ffmpeg's description of a file
    (`ffmpeg -i`): "mono", "stereo", "5.1(side)", "3 channels", ..."""
    match = _AUDIO_STREAM.search(stderr)
    if match is None:
        return None
    layout = match.group(1).strip()
    if (counted := re.match(r"(\d+) channels", layout)) is not None:
        return int(counted.group(1))
    return _LAYOUT_CHANNELS.get(layout.split("(")[0])


def probe_channels(path: str, timeout_s: float | None = 60.0) -> int | None:
    """How many channels the first audio stream of local file `path` has (ffmpeg reads
    its header), or None if it cannot tell."""
    description = _describe(path, timeout_s)
    return None if description is None else channels_in(description)


def same_signal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two decoded channels carry the same signal (dual mono): equal length, and
    no sample apart by more than two steps of 16 bits (resampling rounds alike)."""
    return len(a) == len(b) and (len(a) == 0 or float(np.max(np.abs(a - b))) <= 2 / 32768)


def _ffmpeg_source(path: str) -> str | bytes:
    """`path` as ffmpeg's input argument: behind `file:`, so that a leading `-` or a `:`
    stays part of the name; as bytes when it is not UTF-8 (ffmpeg-python hashes str
    arguments as UTF-8; bytes pass as they are)."""
    source = f"file:{os.path.abspath(path)}"
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(source)
    return source


# The containers (`durations.container`) that an extension promises.
_PROMISED = {
    ".wav": ("wav", "rifx"), ".flac": ("flac",), ".ogg": ("ogg",), ".opus": ("ogg",), ".aif": ("aiff",),
    ".aiff": ("aiff",), ".m4a": ("mp4",), ".mp4": ("mp4",), ".webm": ("matroska",), ".mkv": ("matroska",),
}


def _not_what_its_name_says(path: str) -> str | None:
    """'not a WAV file ...' when `path`'s extension names a container whose header its
    first bytes lack; else None."""
    from pipeline.durations import container

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _PROMISED:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if container(head) in _PROMISED[suffix]:
        return None
    return f"not a {suffix[1:].upper()} file: it does not start with a {suffix[1:].upper()} header"


def _run_ffmpeg(path: str, start_s: float, end_s: float | None, timeout_s: float | None,
                channel: int | None = None) -> Decoded:
    import ffmpeg

    input_args = {}
    if start_s > 0:
        input_args["ss"] = f"{start_s:.3f}"
    if end_s is not None:
        input_args["t"] = f"{end_s - start_s:.3f}"
    # One channel as it is (ffmpeg's pan filter), or every channel mixed down by `-ac 1`.
    pick = {} if channel is None else {"af": f"pan=mono|c0=c{channel}"}
    stream = (
        ffmpeg.input(_ffmpeg_source(path), **input_args)
        # 16-bit samples, scaled as faster-whisper's own decode_audio scales them: float
        # output differs by half a step of 16 bits, and that alone changed a word of an
        # 8 kHz call ("she called" -> "he called") against faster-whisper run by hand.
        .output("pipe:", format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, vn=None, sn=None, dn=None,
                **pick)
        # level+info: every line tagged with its level, and the container's Duration line.
        .global_args("-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info", "-threads", "1")
    )
    process = ffmpeg.run_async(stream, cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise DecodeError("timeout", f"ffmpeg did not finish decoding within {timeout_s:.0f}s") from None
    stderr = err.decode("utf-8", "replace")
    errors = [m.group(1) for ln in stderr.splitlines() if (m := _ERROR_LINE.search(ln))]
    if process.returncode != 0:
        message = "\n".join(errors) or stderr.strip() or f"exit code {process.returncode}"
        error_type = "no_audio_stream" if "does not contain any stream" in stderr else "decode_error"
        if (named := _not_what_its_name_says(path)) is not None:
            # ffmpeg then guesses a format from the bytes and names that one's failure
            # ("Failed to find two consecutive MPEG audio frames." for a .wav).
            message = f"{named}; ffmpeg: {message}"
        raise DecodeError(error_type, f"ffmpeg failed: {message[-_STDERR_CHARS:]}")
    samples = np.frombuffer(out, dtype=np.int16).astype(np.float32)
    samples /= 32768.0  # in place: one float copy of a 3-hour file, not two
    container_s = _container_seconds(stderr)
    if container_s is not None:
        # What this window of the container should hold.
        container_s = max(0.0, container_s - start_s)
        if end_s is not None:
            container_s = min(container_s, end_s - start_s)
    # A container's duration is its longest stream's: a video track may well outlast the
    # audio, so with video only decode errors are worth a warning.
    expected_s = None if _VIDEO_STREAM.search(stderr) else container_s
    return Decoded(samples, container_s, _warning(len(samples) / SAMPLE_RATE, expected_s, errors))


def _container_seconds(stderr: str) -> float | None:
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", stderr)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _warning(decoded_s: float, container_s: float | None, errors: list[str]) -> str | None:
    parts = []
    if container_s is not None and container_s - decoded_s > max(GAP_TOLERANCE_S, GAP_TOLERANCE_SHARE * container_s):
        parts.append(f"decoded {decoded_s:.1f}s of a {container_s:.1f}s container")
    if errors:
        parts.append(f"ffmpeg reported {len(errors)} decode error(s), first: {errors[0][:200]}")
    return "; ".join(parts) or None

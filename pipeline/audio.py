"""Decode any audio or video container to 16 kHz mono float32 with ffmpeg.

ffmpeg-python builds the command; the binary is the one the imageio-ffmpeg wheel ships
(or $BULKSCRIBE_FFMPEG / $IMAGEIO_FFMPEG_EXE), so no system package is needed. Samples
come back through a pipe. File names are passed as arguments, never through a shell,
and with ffmpeg's `file:` prefix so that a name starting with `-` or holding `:` is
still a name. We do not use PyAV's whole-file `decode_audio`: it peaked at 1.7 GB on a
3-hour mp3, where ffmpeg's output is 4 bytes a sample (690 MB for 3 hours).
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile

import fsspec
import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
_STDERR_CHARS = 2_000
_COPY_CHUNK = 1 << 22


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


def decode(
    uri: str,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    storage_options: dict | None = None,
) -> np.ndarray:
    """Decode `[start_s, end_s)` of `uri` to a 16 kHz mono float32 array.

    Local files are read by ffmpeg in place. Other URLs are first copied, in chunks,
    to a local temporary file: containers such as mp4 keep their index at the end and
    cannot be decoded from a pipe.

    Raises:
        DecodeError: with `error_type` `empty_file`, `no_audio_stream` or `decode_error`
            and ffmpeg's own message.
        FileNotFoundError, PermissionError: from the storage layer, unchanged.
    """
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if fs.size(path) == 0:
        raise DecodeError("empty_file", f"{uri} is empty (0 bytes)")
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols:
        # Fail the way a remote read would, before ffmpeg turns it into a vaguer message.
        with open(path, "rb"):
            pass
        return _run_ffmpeg(path, start_s, end_s)
    suffix = posixpath.splitext(path)[1]
    with tempfile.NamedTemporaryFile(prefix="bulkscribe-", suffix=suffix) as tmp:
        with fs.open(path, "rb") as src:
            shutil.copyfileobj(src, tmp, _COPY_CHUNK)
        tmp.flush()
        return _run_ffmpeg(tmp.name, start_s, end_s)


def _run_ffmpeg(path: str, start_s: float, end_s: float | None) -> np.ndarray:
    import ffmpeg

    input_args = {}
    if start_s > 0:
        input_args["ss"] = f"{start_s:.3f}"
    if end_s is not None:
        input_args["t"] = f"{end_s - start_s:.3f}"
    stream = (
        ffmpeg.input(f"file:{os.path.abspath(path)}", **input_args)
        .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=SAMPLE_RATE, vn=None, sn=None, dn=None)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1")
    )
    try:
        out, _ = ffmpeg.run(stream, cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as exc:
        stderr = (exc.stderr or b"").decode("utf-8", "replace").strip()
        error_type = "no_audio_stream" if "does not contain any stream" in stderr else "decode_error"
        raise DecodeError(error_type, f"ffmpeg failed: {stderr[-_STDERR_CHARS:] or 'no message'}") from None
    return np.frombuffer(out, dtype=np.float32)

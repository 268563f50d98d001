"""Durations of remote files read from their headers, against ffmpeg's, for the containers
an archive holds; the reads are few and small, never the whole file."""

from __future__ import annotations

import subprocess

import pytest

from pipeline import audio, durations

# (name, ffmpeg output options): each a real encoding of the same 47 s of speech.
ENCODINGS = [
    ("pcm.wav", ["-c:a", "pcm_s16le"]),
    ("stereo24.wav", ["-ar", "44100", "-ac", "2", "-c:a", "pcm_s24le"]),
    ("big.rf64.wav", ["-rf64", "always", "-c:a", "pcm_s16le"]),
    ("speech.flac", ["-c:a", "flac"]),
    ("speech.aiff", ["-c:a", "pcm_s16be"]),
    ("cbr.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
    ("vbr.mp3", ["-c:a", "libmp3lame", "-q:a", "5"]),
    ("noxing.mp3", ["-c:a", "libmp3lame", "-b:a", "32k", "-write_xing", "0"]),
    ("mpeg25.mp3", ["-ar", "8000", "-c:a", "libmp3lame", "-b:a", "16k"]),
    # An ID3 tag larger than the first read, as cover art makes it.
    ("tagged.mp3", ["-c:a", "libmp3lame", "-b:a", "64k", "-metadata", "comment=" + "x" * 100_000]),
    ("speech.ogg", ["-c:a", "libvorbis"]),
    ("speech.opus", ["-c:a", "libopus"]),
    ("moov-last.m4a", ["-c:a", "aac"]),
    ("moov-first.m4a", ["-c:a", "aac", "-movflags", "+faststart"]),
    ("speech.webm", ["-c:a", "libopus"]),
    ("speech.mkv", ["-c:a", "flac"]),
]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, speech_dir):
    folder = tmp_path_factory.mktemp("encodings")
    source = speech_dir / "misc" / "jfk.flac"
    made = {}
    for name, options in ENCODINGS + [("speech.aac", ["-c:a", "aac", "-f", "adts"])]:
        target = folder / name
        subprocess.run([audio.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-stream_loop", "3", "-i", str(source),
                        "-ac", "1", "-ar", "16000", *options, str(target)], check=True)
        made[name] = target
    return made


def _measure(path) -> tuple[float | None, list[tuple[int, int]]]:
    data = path.read_bytes()
    reads = []

    def read(start: int, end: int) -> bytes:
        reads.append((start, end))
        return data[start:end]

    return durations.duration(read, len(data), path.name), reads


@pytest.mark.parametrize("name", [name for name, _ in ENCODINGS])
def test_the_header_tells_the_duration_ffmpeg_finds(encoded, name):
    found, reads = _measure(encoded[name])
    expected = audio.probe_duration(str(encoded[name]))
    assert expected is not None and expected > 40
    # MP3 frames are 24-72 ms: a frame count or a bit rate is exact to a few frames (ffmpeg
    # also takes off the encoder's delay and padding).
    assert found == pytest.approx(expected, abs=0.3)
    assert len(reads) <= 3 and all(end - start <= durations.HEAD_BYTES for start, end in reads)


def test_an_unknown_container_or_a_false_name_gives_no_duration(encoded, tmp_path):
    assert _measure(encoded["speech.aac"])[0] is None  # AAC in ADTS frames: no header tells
    renamed = tmp_path / "not-really.mp3"  # random bytes are not taken for MP3 frames
    renamed.write_bytes(bytes(range(256)) * 2000)
    assert _measure(renamed)[0] is None
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(encoded["pcm.wav"].read_bytes()[:30])
    assert _measure(truncated)[0] is None


def test_remote_files_are_measured_with_ranged_reads(encoded):
    import fsspec

    fs = fsspec.filesystem("memory")
    names = ["pcm.wav", "vbr.mp3", "speech.ogg", "moov-last.m4a", "speech.aac"]
    for name in names:
        fs.pipe_file(f"/headers/{name}", encoded[name].read_bytes())
    try:
        found = durations.remote_durations([f"memory://headers/{n}" for n in names],
                                           [encoded[n].stat().st_size for n in names])
        missing = durations.remote_durations(["memory://headers/gone.wav"], [10_000_000])
    finally:
        fs.rm("/headers", recursive=True)
    assert found[:4] == pytest.approx([audio.probe_duration(str(encoded[n])) for n in names[:4]], abs=0.2)
    assert found[4] is None and missing == [None]  # a missing file is the actor's to report


def test_files_on_a_web_server_are_read_from_their_start(encoded):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(encoded["pcm.wav"].parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # SimpleHTTPRequestHandler ignores ranges
    threading.Thread(target=server.serve_forever, daemon=True).start()
    names = ["pcm.wav", "tagged.mp3", "moov-first.m4a"]
    try:
        found = durations.remote_durations([f"http://127.0.0.1:{server.server_port}/{n}" for n in names],
                                           [encoded[n].stat().st_size for n in names])
    finally:
        server.shutdown()
    assert found == pytest.approx([audio.probe_duration(str(encoded[n])) for n in names], abs=0.3)


def test_a_header_cut_short_or_garbled_never_raises(encoded):
    import math
    import random

    rng = random.Random(7)
    for name, _ in ENCODINGS:
        data = encoded[name].read_bytes()
        variants = [data[:n] for n in (4, 12, 40, 200, 5000)]
        for _ in range(20):
            garbled = bytearray(data[:HEAD])
            for _ in range(8):
                garbled[rng.randrange(4, len(garbled))] = rng.randrange(256)
            variants.append(bytes(garbled) + data[HEAD:])
        for variant in variants:
            found = durations.duration(lambda start, end: variant[start:end], len(variant), name)
            assert found is None or (math.isfinite(found) and found >= 0), (name, found)

    # A frame count no file of this size could hold (a damaged Xing header): not believed.
    data = bytearray(encoded["vbr.mp3"].read_bytes())
    at = max(data.find(b"Xing"), data.find(b"Info"))
    data[at + 8:at + 12] = (0xFFFFFF00).to_bytes(4, "big")
    assert durations.duration(lambda start, end: bytes(data[start:end]), len(data), "vbr.mp3") is None


HEAD = 4096

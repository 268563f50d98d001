import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import audio
from tests.helpers import make_bad_files


@pytest.mark.parametrize(
    "rel, seconds",
    [
        ("librispeech/1089-134686-0000.flac", 10.435),
        ("misc/jfk.flac", 11.0),  # 44.1 kHz stereo
        ("librivox/shakespeare_sonnet_001.mp3", 53.316),
        ("variants/sonnet_001_excerpt.ogg", 8.995),
        ("variants/sonnet_001_excerpt.mp4", 9.019),
        ("variants/big_buck_bunny_small.mp4", 5.312),  # video container, 5.1 audio
    ],
)
def test_decodes_containers_to_16k_mono_float32(speech_dir, rel, seconds):
    samples = audio.decode(str(speech_dir / rel)).samples
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / audio.SAMPLE_RATE - seconds) < 0.1
    assert 0.001 < float(np.abs(samples).max()) < 2.0  # a stereo downmix may pass 1.0


def test_window_decoding(speech_dir):
    samples = audio.decode(str(speech_dir / "misc" / "jfk.flac"), start_s=2.0, end_s=5.0).samples
    assert len(samples) == 3 * audio.SAMPLE_RATE


def test_windows_of_a_remote_file_share_one_download_per_version(tmp_path, speech_dir, monkeypatch):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    monkeypatch.setenv(audio.CACHE_ENV, str(tmp_path / "cache"))
    local = speech_dir / "librivox" / "shakespeare_sonnet_001.mp3"
    uri = "memory://archive/sonnet.mp3"
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/archive/sonnet.mp3", local.read_bytes())
    opened = []
    real_open = MemoryFileSystem._open
    def reading(self, path, mode="rb", *args, **kwargs):
        if mode.startswith("r"):
            opened.append(path)
        return real_open(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", reading)
    try:
        for start, end in ((0.0, 20.0), (20.0, 40.0), (40.0, None), (12.0, 28.0)):
            remote = audio.decode(uri, start_s=start, end_s=end).samples
            assert np.array_equal(remote, audio.decode(str(local), start_s=start, end_s=end).samples)
        assert len(opened) == 1  # three windows and a seam's stretch: one download
        assert len(list((tmp_path / "cache").glob("*.mp3"))) == 1
        # The file replaced in the store: its windows come from the new bytes, never the old copy.
        other = speech_dir / "librispeech" / "1089-134686-0000.flac"
        fs.pipe_file("/archive/sonnet.mp3", other.read_bytes())
        assert np.array_equal(audio.decode(uri, start_s=0.0, end_s=5.0).samples,
                              audio.decode(str(other), start_s=0.0, end_s=5.0).samples)
        assert len(opened) == 2
        # A whole file is decoded from a temporary copy, not kept.
        audio.decode(uri)
        assert len(opened) == 3 and len(list((tmp_path / "cache").glob("*.mp3"))) == 2
    finally:
        fs.rm("/archive", recursive=True)


def test_the_cache_removes_idle_copies_oldest_first(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    now = time.time()
    for name, idle_s in (("old.wav", 7200), ("older.wav", 9000), ("busy.wav", 60)):
        (folder / name).write_bytes(b"x" * 100)
        os.utime(folder / name, (now - idle_s, now - idle_s))
    monkeypatch.setattr(audio, "CACHE_BYTES", 300)
    audio._make_room(str(folder), 100)  # 300 + 100 bytes: the oldest idle copy makes room
    assert sorted(p.name for p in folder.iterdir()) == ["busy.wav", "old.wav"]
    audio._make_room(str(folder), 1000)  # still too much, but a copy in use is never removed
    assert sorted(p.name for p in folder.iterdir()) == ["busy.wav"]


def test_names_with_shell_characters_are_never_interpreted(tmp_path, speech_dir, monkeypatch):
    name = tmp_path / "-it's a \"clip\" $(touch pwned) ; rm -rf x.wav"
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", name)
    monkeypatch.chdir(tmp_path)
    assert len(audio.decode(str(name)).samples) > 0
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind, error_type", [("empty", "empty_file"), ("text", "decode_error"), ("corrupt", "decode_error")])
def test_broken_files_raise_typed_errors_with_ffmpegs_message(tmp_path, speech_dir, kind, error_type):
    bad = make_bad_files(tmp_path, speech_dir)[kind]
    with pytest.raises(audio.DecodeError) as info:
        audio.decode(str(bad))
    assert info.value.error_type == error_type
    if error_type == "decode_error":
        assert "ffmpeg failed:" in str(info.value) and len(str(info.value)) > len("ffmpeg failed: ")


def test_a_file_that_is_not_what_its_name_says_is_named_so(tmp_path, speech_dir):
    # Bytes ffmpeg takes for MPEG audio: without the check it says "Failed to find two
    # consecutive MPEG audio frames." of a .wav.
    fake = tmp_path / "call.wav"
    fake.write_bytes(b"\xff\xfb\x90\x00" + bytes(range(256)) * 40)
    with pytest.raises(audio.DecodeError) as info:
        audio.decode(str(fake))
    assert str(info.value).startswith("ffmpeg failed: not a WAV file: it does not start with a WAV header; ffmpeg: ")
    # A real WAV cut short is a WAV: ffmpeg's own words only.
    cut = tmp_path / "cut.wav"
    cut.write_bytes((speech_dir / "misc" / "LDC93S1.wav").read_bytes()[:30])
    with pytest.raises(audio.DecodeError) as info:
        audio.decode(str(cut))
    assert "not a WAV file" not in str(info.value)


def test_video_without_audio_is_no_audio_stream(tmp_path):
    import subprocess

    video = tmp_path / "silent.mp4"
    subprocess.run(
        [audio.ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64:d=1",
         "-c:v", "mpeg4", str(video)],
        check=True,
    )
    with pytest.raises(audio.DecodeError) as info:
        audio.decode(str(video))
    assert info.value.error_type == "no_audio_stream"


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        audio.decode(str(tmp_path / "gone.wav")).samples


def test_a_fifo_or_a_link_loop_named_wav_fails_at_once(tmp_path):
    import os

    fifo, loop = tmp_path / "pipe.wav", tmp_path / "loop.wav"
    os.mkfifo(fifo)  # opened, it would wait for a writer for ever
    loop.symlink_to(loop)
    with pytest.raises(audio.DecodeError) as failed:
        audio.decode(str(fifo))
    assert failed.value.error_type == "not_a_file"
    with pytest.raises(OSError):
        audio.decode(str(loop))  # the unit's row says `unreadable` (tests/test_actor.py)
    from pipeline import durations

    assert durations.local_duration(str(fifo)) is None


def test_remote_urls_are_decoded_through_fsspec(speech_dir):
    import fsspec

    fsspec.filesystem("memory").pipe("/remote/ldc.wav", (speech_dir / "misc" / "LDC93S1.wav").read_bytes())
    assert abs(len(audio.decode("memory:///remote/ldc.wav").samples) / audio.SAMPLE_RATE - 2.925) < 0.05


def test_non_utf8_file_names_survive_the_trip(tmp_path, speech_dir):
    from pipeline import inputs

    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9 \xff.wav"
    with open(raw, "wb") as f:
        f.write((speech_dir / "misc" / "LDC93S1.wav").read_bytes())
    (uri,) = inputs.expand([str(tmp_path)]).column("uri").to_pylist()
    assert uri.startswith("file://") and "%E9" in uri and uri.encode("utf-8")
    assert os.fsencode(audio.local_path(uri)) == raw
    assert abs(audio.decode(uri).duration_s - 2.925) < 0.01


def test_garbage_in_the_middle_is_a_warning_not_a_failure(tmp_path, speech_dir):
    data = bytearray((speech_dir / "librivox" / "shakespeare_sonnet_001.mp3").read_bytes())
    third = len(data) // 3
    data[third : third + 60_000] = bytes(60_000)
    (tmp_path / "holed.mp3").write_bytes(bytes(data))
    decoded = audio.decode(str(tmp_path / "holed.mp3"))
    assert 40 < decoded.duration_s < 50 and abs(decoded.container_s - 53.3) < 0.1
    assert decoded.warning.startswith("decoded ") and "of a 53.3s container" in decoded.warning
    assert audio.decode(str(speech_dir / "misc" / "jfk.flac")).warning is None


def test_mp4_without_its_moov_atom_is_a_decode_error(tmp_path, speech_dir):
    data = (speech_dir / "variants" / "sonnet_001_excerpt.mp4").read_bytes()
    (tmp_path / "cut.m4a").write_bytes(data[: data.find(b"moov") - 8])
    with pytest.raises(audio.DecodeError) as info:
        audio.decode(str(tmp_path / "cut.m4a"))
    assert info.value.error_type == "decode_error" and "moov atom not found" in str(info.value)


def test_decode_timeout_kills_ffmpeg(tmp_path, speech_dir):
    with pytest.raises(audio.DecodeError) as info:
        audio.decode(str(speech_dir / "librivox" / "shakespeare_sonnet_001.mp3"), timeout_s=0.001)
    assert info.value.error_type == "timeout"


def test_no_false_warning_for_a_window_or_a_video_longer_than_its_audio(tmp_path, speech_dir):
    import subprocess

    sonnet = str(speech_dir / "librivox" / "shakespeare_sonnet_001.mp3")
    # The last window of a split file, and one in its middle.
    assert audio.decode(sonnet, start_s=30.0).warning is None
    assert audio.decode(sonnet, start_s=10.0, end_s=30.0).warning is None
    # A video whose picture goes on 4 s after the speech ends.
    video = tmp_path / "talk.mp4"
    subprocess.run([audio.ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "color=c=black:s=64x64:d=7",
                    "-i", str(speech_dir / "misc" / "LDC93S1.wav"), "-c:v", "mpeg4", "-c:a", "aac", str(video)],
                   check=True)
    decoded = audio.decode(str(video))
    assert abs(decoded.duration_s - 2.9) < 0.2 and decoded.warning is None


@pytest.mark.parametrize("rel", ["speech/misc/LDC93S1.wav", "speech/librivox/shakespeare_sonnet_001.mp3",
                                 "hard/telephone/ru_agent-newlocation.wav"])
def test_samples_are_faster_whispers_own_bit_for_bit(rel):
    """The same samples as `faster_whisper.decode_audio` (16-bit, /32768): half a 16-bit
    step of difference changed a word of an 8 kHz call."""
    from faster_whisper import decode_audio

    path = Path(__file__).parent / "data" / rel
    ours = audio.decode(str(path)).samples
    theirs = decode_audio(str(path))
    assert ours.dtype == theirs.dtype == np.float32 and np.array_equal(ours, theirs)

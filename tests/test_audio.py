import os
import shutil

import numpy as np
import pytest

from pipeline import audio
from tests.conftest import make_bad_files


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
    samples = audio.decode(str(speech_dir / rel))
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / audio.SAMPLE_RATE - seconds) < 0.1
    assert 0.001 < float(np.abs(samples).max()) < 2.0  # a stereo downmix may pass 1.0


def test_window_decoding(speech_dir):
    samples = audio.decode(str(speech_dir / "misc" / "jfk.flac"), start_s=2.0, end_s=5.0)
    assert len(samples) == 3 * audio.SAMPLE_RATE


def test_names_with_shell_characters_are_never_interpreted(tmp_path, speech_dir):
    name = tmp_path / "-it's a \"clip\" $(touch pwned) ; rm -rf x.wav"
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", name)
    os.chdir(tmp_path)
    assert len(audio.decode(str(name))) > 0
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind, error_type", [("empty", "empty_file"), ("text", "decode_error"), ("corrupt", "decode_error")])
def test_broken_files_raise_typed_errors_with_ffmpegs_message(tmp_path, speech_dir, kind, error_type):
    bad = make_bad_files(tmp_path, speech_dir)[kind]
    with pytest.raises(audio.DecodeError) as info:
        audio.decode(str(bad))
    assert info.value.error_type == error_type
    if error_type == "decode_error":
        assert "ffmpeg failed:" in str(info.value) and len(str(info.value)) > len("ffmpeg failed: ")


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
        audio.decode(str(tmp_path / "gone.wav"))


def test_remote_urls_are_decoded_through_fsspec(speech_dir):
    import fsspec

    fsspec.filesystem("memory").pipe("/remote/ldc.wav", (speech_dir / "misc" / "LDC93S1.wav").read_bytes())
    assert abs(len(audio.decode("memory:///remote/ldc.wav")) / audio.SAMPLE_RATE - 2.925) < 0.05

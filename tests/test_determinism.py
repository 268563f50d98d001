"""The same file gives the same transcript whatever ran beside it, in what order, on how
many threads or actors, and however late its audio was decoded."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import pytest

from pipeline import inputs, units as units_module
from pipeline.config import WorkerConfig
from pipeline.schema import PlanRow
from pipeline.units import transcribe_units

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
# Files that make tiny.en fall back to sampling (music, Russian) beside plain English ones.
FILES = [
    DATA / "speech" / "variants" / "big_buck_bunny_small.mp4",
    DATA / "hard" / "telephone" / "ru_agent-newlocation.wav",
    DATA / "speech" / "misc" / "LDC93S1.wav",
    DATA / "speech" / "librispeech" / "1089-134686-0000.flac",
    DATA / "hard" / "short" / "one_two_three.wav",
    DATA / "hard" / "accented" / "audiomnist_9_42_10.wav",
]


def _units(paths) -> list[PlanRow]:
    table = inputs.expand([str(p) for p in paths])
    return [PlanRow(shard=0, unit_id=r["unit_id"], uri=r["uri"], size_bytes=r["size_bytes"], est_audio_s=10.0,
                    start_s=0.0, end_s=None) for r in table.to_pylist()]


def _texts(units, transcriber, config) -> dict[str, tuple]:
    found = {}
    for row, segments in transcribe_units(units, transcriber, config, attempt=1, node="n"):
        found[row.uri] = (row.status, tuple(row.flags), tuple((s.start, s.end, s.text) for s in segments))
    return found


def test_order_threads_and_decoding_delays_change_no_transcript(tiny_model, monkeypatch):
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    units = _units(FILES)
    config = WorkerConfig(output="unused", whisper=WhisperOptions(), threads=1, model_name="tiny.en",
                          model_sha256=tiny_model.sha256, fingerprint="f" * 16)
    one_thread = Transcriber(tiny_model.path, config.whisper, cpu_threads=1)
    reference = _texts(units, one_thread, config)
    assert one_thread.resampled >= 2, "no file fell back to sampling: the test would show nothing"

    rng = random.Random(7)
    decode = units_module.decode_window

    def late_decode(*args, **kwargs):
        # Decoding ahead finishes at random moments relative to transcription.
        time.sleep(rng.choice([0.0, 0.0, 0.05, 0.3]))
        return decode(*args, **kwargs)

    monkeypatch.setattr(units_module, "decode_window", late_decode)
    two_threads = Transcriber(tiny_model.path, config.whisper, cpu_threads=2)
    for transcriber in (two_threads, one_thread):
        shuffled = units[:]
        rng.shuffle(shuffled)
        assert _texts(shuffled, transcriber, config) == reference
    # Alone, after the others, a file that falls back still reads the same.
    assert _texts(units[:1], one_thread, config)[units[0].uri] == reference[units[0].uri]


def test_actors_of_any_size_write_what_one_process_transcribes(ray_cluster, tmp_path, tiny_model):
    from pipeline import audio, quality
    from pipeline.config import ActorOptions, JobSpec, WhisperOptions
    from pipeline.query import open_output
    from pipeline.job import run
    from pipeline.transcriber import Transcriber

    src = tmp_path / "in"
    src.mkdir()
    for path in FILES:
        shutil.copy(path, src / path.name)
    # What this very process transcribes, file by file (the environment of a plain script).
    alone = Transcriber(tiny_model.path, WhisperOptions(), cpu_threads=1)
    expected = {}
    for path in sorted(src.iterdir()):
        transcript = alone.transcribe(audio.decode(str(path)).samples)
        if not quality.is_no_speech(transcript.segments, WhisperOptions()):
            expected[path.name] = [(round(s.start, 3), round(s.end, 3), s.text) for s in transcript.segments]
    for actors, threads, shard_audio_s in ((1, 1, 1e6), (2, 1, 5.0), (1, 2, 10.0)):
        out = tmp_path / f"out-{actors}-{threads}"
        # Flagging, not routing: the Russian file is to come out as tiny.en writes it here.
        run(JobSpec(inputs=(str(src),), output=str(out), actors=ActorOptions(threads=threads, actors=actors),
                    whisper=WhisperOptions(other_languages="flag"), progress=False, shard_audio_s=shard_audio_s))
        rows = open_output(str(out)).segments.to_table().sort_by([("uri", "ascending"), ("segment", "ascending")])
        found: dict[str, list] = {}
        for r in rows.to_pylist():
            found.setdefault(r["uri"].rsplit("/", 1)[1], []).append((r["start"], r["end"], r["text"]))
        assert found == expected, (actors, threads)

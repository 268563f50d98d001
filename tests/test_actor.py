"""One shard through the real model, without Ray: rows, statuses, parts and marker."""

import hashlib
import shutil

import pyarrow as pa
import pytest

from pipeline import inputs, plan
from pipeline.actor import process_shard
from pipeline.config import WhisperOptions, WorkerConfig
from pipeline.schema import FILES_SCHEMA, SEGMENTS_SCHEMA
from pipeline.store import OutputStore
from tests.helpers import make_bad_files
from pipeline.ledger import next_attempt
from pipeline.markers import read_marker


@pytest.fixture
def config(tmp_path, tiny_model):
    return WorkerConfig(
        output=str(tmp_path / "out"), whisper=WhisperOptions(), threads=2,
        model_name="tiny.en", model_sha256=tiny_model.sha256, fingerprint="f" * 16,
    )


def _shard(paths, shard=0):
    units = inputs.expand([str(p) for p in paths])
    return plan.assign_shards(units, shard, shard_audio_s=1e9)


def test_a_shard_with_good_and_bad_files(tmp_path, speech_dir, transcriber, config):
    bad = make_bad_files(tmp_path / "bad", speech_dir)
    good = [speech_dir / "misc" / "LDC93S1.wav", speech_dir / "misc" / "empty_noise.wav"]
    units = _shard(good + list(bad.values()) + [tmp_path / "bad"])
    store = OutputStore(config.output)
    result = process_shard(0, units, transcriber, store, config, node="test-node")
    assert (result.committed, result.skipped, result.units) == (True, False, 6)
    assert (result.ok, result.no_speech, result.failed) == (2, 1, 3)

    files = store.read_parquet(store.part_path("files", 0))
    assert files.schema.equals(FILES_SCHEMA)
    rows = {r["uri"].rsplit("/", 1)[1]: r for r in files.to_pylist()}
    assert rows["LDC93S1.wav"]["status"] == "ok" and rows["LDC93S1.wav"]["segments"] >= 1
    assert abs(rows["LDC93S1.wav"]["duration_s"] - 2.925) < 0.01 and rows["LDC93S1.wav"]["rtfx"] > 0
    assert rows["empty_noise.wav"]["status"] == "no_speech" and rows["empty_noise.wav"]["segments"] == 0
    assert rows["empty.wav"]["error_type"] == "empty_file"
    for name in ("notes.wav", "corrupt.flac"):
        assert rows[name]["status"] == "failed" and rows[name]["error_type"] == "decode_error"
        assert "ffmpeg failed" in rows[name]["error_message"]
    # A truncated mp3 still decodes what it has: that is speech, not a failure.
    assert rows["truncated.mp3"]["status"] == "ok"
    assert "decoded 5.3s of a 53.3s container" in rows["truncated.mp3"]["decode_warning"]
    assert all(r["attempts"] == 1 and r["node"] == "test-node" and r["cpu_threads"] == 2 for r in rows.values())
    from pipeline.report import format_summary, summarize

    assert "warning: 1 file(s) decoded with a warning" in format_summary(summarize(store))

    segments = store.read_parquet(store.part_path("segments", 0))
    assert segments.schema.equals(SEGMENTS_SCHEMA)
    ldc = [r for r in segments.to_pylist() if r["uri"].endswith("LDC93S1.wav")]
    assert [r["segment"] for r in ldc] == list(range(len(ldc)))
    assert "greasy wash water" in " ".join(r["text"] for r in ldc).lower()

    marker = read_marker(store, 0)
    for table in ("segments", "files"):
        data = store.fs.cat_file(store.part_path(table, 0))
        assert marker.parts[table].sha256 == hashlib.sha256(data).hexdigest()
    assert marker.statuses == {"ok": 2, "no_speech": 1, "failed": 3}


def _files_from_manifest(manifest, text, transcriber, config) -> pa.Table:
    """Write `text` to `manifest`, run its units as shard 0, return the `files` part."""
    manifest.write_text(text)
    units = plan.assign_shards(inputs.expand([str(manifest)]), 0, 1e9)
    store = OutputStore(config.output)
    process_shard(0, units, transcriber, store, config, node="n")
    return store.read_parquet(store.part_path("files", 0))


def test_missing_file_is_a_failed_row(tmp_path, speech_dir, transcriber, config):
    text = f"{speech_dir / 'misc' / 'LDC93S1.wav'}\n{tmp_path / 'gone.wav'}\n"
    files = _files_from_manifest(tmp_path / "m.txt", text, transcriber, config)
    rows = {r["uri"]: r for r in files.to_pylist()}
    assert rows[str(tmp_path / "gone.wav")]["error_type"] == "not_found"


def test_a_committed_shard_is_not_run_again(tmp_path, speech_dir, transcriber, config):
    units = _shard([speech_dir / "misc" / "LDC93S1.wav"])
    store = OutputStore(config.output)
    first = process_shard(0, units, transcriber, store, config, node="n")
    before = store.fs.cat_file(store.part_path("segments", 0))
    again = process_shard(0, units, transcriber, store, config, node="n")
    assert first.committed and again.skipped and not again.committed
    assert store.fs.cat_file(store.part_path("segments", 0)) == before
    assert next_attempt(store, 0) == 2  # the second call never started an attempt


def test_manifest_columns_reach_the_files_table(tmp_path, speech_dir, transcriber, config):
    text = f"uri,speaker,take\n{speech_dir / 'misc' / 'LDC93S1.wav'},ldc,3\n"
    files = _files_from_manifest(tmp_path / "m.csv", text, transcriber, config)
    assert files.column_names[-2:] == ["speaker", "take"]
    assert files.column("take").type == pa.int64() and files.column("speaker").to_pylist() == ["ldc"]


def test_sonnet_with_high_no_speech_prob_is_still_speech(tmp_path, speech_dir, transcriber, config):
    units = _shard([speech_dir / "librivox" / "shakespeare_sonnet_001.mp3"])
    store = OutputStore(config.output)
    result = process_shard(0, units, transcriber, store, config, node="n")
    assert result.ok == 1
    text = " ".join(store.read_parquet(store.part_path("segments", 0)).column("text").to_pylist()).lower()
    assert "from fairest creatures we desire increase" in text


def _ffmpeg(*args: str) -> None:
    import subprocess

    from pipeline.audio import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *args], check=True)


def test_every_kind_of_bad_input_becomes_a_clear_row(tmp_path, speech_dir, transcriber, config):
    import os

    d = tmp_path / "in"
    d.mkdir()
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "5", str(d / "silence.wav"))
    _ffmpeg("-i", str(speech_dir / "misc" / "LDC93S1.wav"), "-t", "0.3", str(d / "short.wav"))
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=1", "-c:v", "mpeg4", str(d / "no-audio.mp4"))
    mp4 = (speech_dir / "variants" / "sonnet_001_excerpt.mp4").read_bytes()
    (d / "no-moov.m4a").write_bytes(mp4[: mp4.find(b"moov") - 8])
    mp3 = bytearray((speech_dir / "librivox" / "shakespeare_sonnet_001.mp3").read_bytes())
    mp3[len(mp3) // 3 : len(mp3) // 3 + 60_000] = bytes(60_000)
    (d / "holed.mp3").write_bytes(bytes(mp3))
    with open(os.fsencode(str(d)) + b"/caf\xe9 'quoted' $(x).wav", "wb") as f:
        f.write((speech_dir / "misc" / "LDC93S1.wav").read_bytes())
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", d / "deleted-later.wav")
    units = _shard([d])
    (d / "deleted-later.wav").unlink()  # gone between planning and transcription

    store = OutputStore(config.output)
    process_shard(0, units, transcriber, store, config, node="n")
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in store.read_parquet(store.part_path("files", 0)).to_pylist()}
    got = {name: (r["status"], r["error_type"]) for name, r in rows.items()}
    assert got["silence.wav"] == ("no_speech", None)
    assert got["short.wav"][0] in ("ok", "no_speech") and got["short.wav"][1] is None
    assert got["no-audio.mp4"] == ("failed", "no_audio_stream")
    assert got["no-moov.m4a"] == ("failed", "decode_error") and "moov atom not found" in rows["no-moov.m4a"]["error_message"]
    assert got["deleted-later.wav"] == ("failed", "not_found")
    assert got["holed.mp3"] == ("ok", None) and "of a 53.3s container" in rows["holed.mp3"]["decode_warning"]
    assert got["caf%E9%20%27quoted%27%20%24%28x%29.wav"] == ("ok", None)
    assert all(r["decode_warning"] is None for n, r in rows.items() if n != "holed.mp3")


def test_a_unit_past_its_time_limit_fails_and_the_actor_goes_on(tmp_path, speech_dir, transcriber, config):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class NoTimeForLongFiles(WorkerConfig):
        # No time at all for a unit over a minute, all the time in the world for the
        # others: what the test sees cannot depend on how busy the machine is.
        def transcribe_budget_s(self, audio_s: float) -> float:
            return 0.0 if audio_s > 60 else 3600.0

    # The sonnet twelve times: 10.6 min of speech.
    long = tmp_path / "a-long-reading.mp3"
    _ffmpeg("-stream_loop", "11", "-i", str(speech_dir / "librivox" / "shakespeare_sonnet_001.mp3"), "-c", "copy", str(long))
    units = _shard([long, speech_dir / "misc" / "jfk.flac"])
    config = NoTimeForLongFiles(**dataclasses.asdict(config) | {"whisper": config.whisper})
    store = OutputStore(config.output)
    result = process_shard(0, units, transcriber, store, config, node="n")
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in store.read_parquet(store.part_path("files", 0)).to_pylist()}
    assert rows["a-long-reading.mp3"]["error_type"] == "timeout"
    assert "time limit" in rows["a-long-reading.mp3"]["error_message"]
    assert "stopped after" in rows["a-long-reading.mp3"]["error_message"]  # after its first segment, not at the end
    assert rows["jfk.flac"]["status"] == "ok" and result.committed

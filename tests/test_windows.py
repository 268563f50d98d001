"""Long files split into windows: planned, cut at silence, transcribed apart, stitched."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pipeline import audio, inputs, plan, windows
from tests.helpers import reading_wav
from tests.wer import wer



def test_long_local_files_are_planned_as_windows(tmp_path, speech_dir):
    target, _ = reading_wav(tmp_path / "in", speech_dir, 200)
    units = inputs.expand([str(target), str(speech_dir / "misc" / "jfk.flac")])
    split = windows.split_long(units, 60.0)
    rows = split.to_pylist()
    reading = [r for r in rows if r["uri"].endswith("reading.wav")]
    duration = audio.probe_duration(str(target))
    assert len(reading) == int(np.ceil(duration / 60)) >= 4
    assert [r["start_s"] for r in reading] == [60.0 * k for k in range(len(reading))]
    assert [r["end_s"] for r in reading] == [60.0 * (k + 1) for k in range(len(reading) - 1)] + [None]
    assert all(r["split"] for r in reading) and len({r["unit_id"] for r in reading}) == len(reading)
    jfk = [r for r in rows if r["uri"].endswith("jfk.flac")]
    assert len(jfk) == 1 and not jfk[0]["split"] and jfk[0]["end_s"] is None
    assert not any(windows.split_long(units, None).column("split").to_pylist())
    # Planned again, the same windows: a rerun finds nothing new.
    assert windows.split_long(units, 60.0).column("unit_id").to_pylist() == split.column("unit_id").to_pylist()


def test_local_files_are_measured_from_their_header_and_by_ffmpeg_where_it_does_not_tell(tmp_path, speech_dir,
                                                                                       monkeypatch):
    target, _ = reading_wav(tmp_path / "in", speech_dir, 200)
    aac = tmp_path / "in" / "reading.aac"  # AAC in ADTS frames: no header that durations.py reads
    subprocess.run([audio.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(target), "-c:a", "aac", "-b:a",
                    "128k", "-f", "adts", str(aac)], check=True)
    expected = audio.probe_duration(str(target))
    probe, probed = audio.probe_duration, []
    monkeypatch.setattr(audio, "probe_duration", lambda uri, timeout_s=None: probed.append(uri) or probe(uri, timeout_s))
    rows = windows.split_long(inputs.expand([str(tmp_path / "in")]), 60.0).to_pylist()
    assert probed == [str(aac)]
    for name in ("reading.wav", "reading.aac"):
        assert [r["start_s"] for r in rows if r["uri"].endswith(name)] == [60.0 * k for k in range(math.ceil(expected / 60))]


def test_a_measured_duration_balances_shards_instead_of_the_size_guess(tmp_path, speech_dir):
    mp3 = tmp_path / "clip.mp3"  # 80 s at 64 kbit/s: its size alone says 40 s
    subprocess.run([audio.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-stream_loop", "-1", "-i",
                    str(speech_dir / "misc" / "jfk.flac"), "-t", "80", "-c:a", "libmp3lame", "-b:a", "64k", str(mp3)],
                   check=True)
    units = inputs.expand([str(mp3)])
    assert plan.estimates(units) == [pytest.approx(40, rel=0.05)]
    measured = windows.split_long(units, 60.0)
    assert not measured.column("split")[0].as_py()
    assert plan.estimates(measured) == [pytest.approx(audio.probe_duration(str(mp3)), abs=0.2)]


def test_a_duration_from_the_manifest_plans_windows_without_probing(tmp_path, speech_dir, monkeypatch):
    target, _ = reading_wav(tmp_path / "in", speech_dir, 200)
    manifest = tmp_path / "m.csv"
    # The manifest's duration is taken as it is: a file said to be 150 s long is cut in
    # three (the last window runs to the end of the file, whatever its length).
    manifest.write_text(f"uri,duration_s\n{target},150\n{speech_dir / 'misc' / 'jfk.flac'},\n")
    probed = []
    monkeypatch.setattr(audio, "probe_duration", lambda uri, timeout_s=None: probed.append(uri) or 11.0)
    rows = windows.split_long(inputs.expand([str(manifest)]), 60.0).to_pylist()
    reading = [r for r in rows if r["uri"].endswith("reading.wav")]
    assert [(r["start_s"], r["end_s"]) for r in reading] == [(0.0, 60.0), (60.0, 120.0), (120.0, None)]
    # Only the file without a duration could be probed, and jfk.flac is too small for it.
    assert str(target) not in probed
    # A duration the file is far too small to hold (a typo: 10^9 s) is measured instead,
    # not planned as 1.7 million windows.
    manifest.write_text(f"uri,duration_s\n{target},1000000000\n")
    monkeypatch.undo()
    rows = windows.split_long(inputs.expand([str(manifest)]), 60.0).to_pylist()
    assert [r["start_s"] for r in rows] == [0.0, 60.0, 120.0, 180.0]


def test_remote_files_are_split_by_the_duration_their_manifest_or_header_gives(tmp_path, speech_dir, monkeypatch):
    import fsspec

    fs = fsspec.filesystem("memory")
    target, _ = reading_wav(tmp_path / "in", speech_dir, 200)
    clip = (speech_dir / "misc" / "jfk.flac").read_bytes()
    fs.pipe_file("/archive/reading.wav", target.read_bytes())  # 200 s, as its header says
    fs.pipe_file("/archive/long.flac", clip)  # said to be 150 s by the manifest: not read
    fs.pipe_file("/archive/joined.flac", clip * 40)  # large, but its header says 11 s
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,duration_s\nmemory://archive/long.flac,150\nmemory://archive/reading.wav,\n"
                        "memory://archive/joined.flac,\n")
    monkeypatch.setattr(audio, "probe_duration", lambda *a, **k: pytest.fail("a remote file was probed by ffmpeg"))
    try:
        rows = windows.split_long(inputs.expand([str(manifest)]), 60.0).to_pylist()
    finally:
        fs.rm("/archive", recursive=True)
    assert [(r["start_s"], r["end_s"]) for r in rows if r["uri"].endswith("long.flac")] == [
        (0.0, 60.0), (60.0, 120.0), (120.0, None)]
    monkeypatch.undo()
    local = windows.split_long(inputs.expand([str(target)]), 60.0).to_pylist()
    assert [(r["start_s"], r["end_s"]) for r in rows if r["uri"].endswith("reading.wav")] == [
        (r["start_s"], r["end_s"]) for r in local] and len(local) == 4  # the same windows as its local copy
    assert [(r["start_s"], r["end_s"], r["split"]) for r in rows if r["uri"].endswith("joined.flac")] == [
        (0.0, None, False)]


def test_seams_fall_in_silence_and_both_neighbours_agree(tmp_path, speech_dir):
    target, _ = reading_wav(tmp_path / "in", speech_dir, 120)
    samples = audio.decode(str(target)).samples
    loud = float(np.sqrt(np.mean(samples**2)))
    for nominal in (20.0, 45.0, 60.0, 90.0):
        cut = windows.seam(str(target), nominal)
        assert cut == windows.seam(str(target), nominal)  # deterministic: the neighbour gets the same cut
        assert abs(cut - nominal) <= windows.SEAM_MARGIN_S
        around = samples[int((cut - 0.1) * audio.SAMPLE_RATE): int((cut + 0.1) * audio.SAMPLE_RATE)]
        assert float(np.sqrt(np.mean(around**2))) < 0.05 * loud, f"cut at {cut:.2f}s is not in a pause"


@pytest.mark.slow
def test_a_windowed_file_is_stitched_without_losing_or_doubling_words(tmp_path, speech_dir, ray_cluster, monkeypatch):
    from pipeline.config import JobSpec
    from pipeline.job import run
    from pipeline.store import OutputStore
    from pipeline.verify import verify

    target, reference = reading_wav(tmp_path / "in", speech_dir, 200)
    results = {}
    for name, window_s in (("whole", None), ("windows", 60.0)):
        out = tmp_path / name
        # Shards of a minute (the smallest): a window each, so that a lost shard is one window.
        run(JobSpec(inputs=(str(target),), output=str(out), progress=False, window_s=window_s, shard_audio_s=60.0))
        assert verify(OutputStore(str(out))).ok
        text = duckdb.sql(f"select string_agg(text, ' ' order by start) from '{out}/segments/*.parquet'").fetchall()[0][0]
        results[name] = (out, text)
    out, text = results["windows"]
    files = duckdb.sql(f"select shard, start_s, end_s, status from '{out}/files/*.parquet' order by start_s").fetchall()
    assert len(files) >= 4 and all(status == "ok" for *_, status in files)
    assert len({shard for shard, *_ in files}) == len(files)  # a window a shard
    assert files[0][1] == 0.0 and files[-1][2] is None
    for (_, _, end, _), (_, start, _, _) in zip(files, files[1:]):
        assert end == start and start % 60 != 0  # contiguous, and moved off the nominal boundary into a pause
    windowed, whole = wer([reference], [text]), wer([reference], [results["whole"][1]])
    # Nothing lost or doubled at a seam: the windowed transcript is as good as the whole one.
    assert windowed <= whole + 0.01 and windowed < 0.08, (windowed, whole)
    starts = duckdb.sql(f"select start, \"end\" from '{out}/segments/*.parquet' order by start").fetchall()
    assert all(a[1] <= b[0] + 0.5 for a, b in zip(starts, starts[1:]))  # no overlapping (doubled) segments

    # A lost window costs only that window; the rerun does not even measure the file again.
    shard = files[1][0]
    os.remove(out / "_commits" / f"{shard:06d}.json")
    monkeypatch.setattr(audio, "probe_duration", lambda *a, **k: pytest.fail("a planned file was probed again"))
    summary = run(JobSpec(inputs=(str(target),), output=str(out), progress=False, window_s=60.0, shard_audio_s=60.0))
    assert (summary.shards_ran, summary.shards_skipped) == (1, len(files) - 1)
    again = duckdb.sql(f"select string_agg(text, ' ' order by start) from '{out}/segments/*.parquet'").fetchall()[0][0]
    assert again == text
    markers = [json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")]
    assert all(m["peak_rss_mb"] > 50 for m in markers)


def test_export_joins_the_windows_of_a_file(tmp_path):
    from pipeline.export import export

    class Output:  # the two views export reads, as DuckDB relations
        def __init__(self):
            self.con = duckdb.connect()
            self.con.execute(
                "create table files as select * from (values "
                "('u1', '/a/long.wav', 0.0, 60.1, 60.1, 'en', 'ok'), ('u2', '/a/long.wav', 60.1, NULL, 30.0, 'en', 'ok'), "
                "('u3', '/a/short.wav', 0.0, NULL, 5.0, 'en', 'ok')) "
                "t(unit_id, uri, start_s, end_s, duration_s, language, status)")
            self.con.execute(
                "create table segments as select * from (values "
                "('u2', '/a/long.wav', 0, 61.0, 64.0, 'third', -0.2, 0.01), "
                "('u1', '/a/long.wav', 1, 30.0, 59.5, 'second', -0.2, 0.01), "
                "('u1', '/a/long.wav', 0, 0.5, 29.0, 'first', -0.2, 0.01), "
                "('u3', '/a/short.wav', 0, 0.1, 4.0, 'alone', -0.2, 0.01)) "
                "t(unit_id, uri, segment, start, \"end\", text, avg_logprob, no_speech_prob)")
            for table in ("files", "segments"):  # mixed down: no channel
                self.con.execute(f"alter table {table} add column channel smallint")

        def sql(self, query):
            return self.con.sql(query)

    written = export(Output(), "txt", str(tmp_path / "t"))
    assert sorted(Path(p).name for p in written) == ["long.txt", "short.txt"]
    assert (tmp_path / "t" / "long.txt").read_text().split() == ["first", "second", "third"]
    data = json.loads(Path(export(Output(), "json", str(tmp_path / "j"))[0]).read_text())
    assert data["duration_s"] == 90.1 and [s["text"] for s in data["segments"]] == ["first", "second", "third"]

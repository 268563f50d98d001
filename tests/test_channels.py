"""`--channels split`: each channel of a stereo call its own stream, dual mono once, the
default a mixdown; exports and queries that keep the channels apart; older folders."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from pipeline import audio, channels, inputs
from pipeline.query import open_output
from pipeline.store import OutputStore
from tests.checks import check_output
from tests.helpers import finish, run_ok, start, write_wav
from tests.wer import wer

LEFT, RIGHT = "misc/LDC93S1.wav", "librispeech/1089-134686-0000.flac"


@pytest.fixture(scope="module")
def calls(tmp_path_factory, speech_dir) -> Path:
    """A stereo call of two real utterances that overlap (one per channel), a dual-mono
    recording of one, and a mono file."""
    folder = tmp_path_factory.mktemp("calls")
    left = audio.decode(str(speech_dir / LEFT)).samples
    right = audio.decode(str(speech_dir / RIGHT)).samples
    # The customer starts 1.5 s into the agent's sentence: mixed, both are garbled there.
    right = np.concatenate([np.zeros(int(1.5 * audio.SAMPLE_RATE), np.float32), right])
    write_wav(folder / "call.wav", left, right)
    write_wav(folder / "dual.wav", left, left)
    shutil.copy(speech_dir / RIGHT, folder / "mono.flac")
    return folder


@pytest.fixture(scope="module")
def split_run(calls, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split") / "out"
    run_ok(calls, out, "--channels", "split")
    return out


def test_channel_counts_from_headers_and_from_ffmpeg(calls, speech_dir):
    assert channels.count(str(calls / "call.wav"), None) == 2
    assert channels.count(str(calls / "mono.flac"), None) == 1
    assert channels.count(str(speech_dir / "librivox" / "shakespeare_sonnet_001.mp3"), None) == 2  # ffmpeg's
    assert audio.channels_in("Stream #0:0: Audio: pcm_mulaw, 8000 Hz, stereo, s16, 128 kb/s") == 2
    assert audio.channels_in("Stream #0:1(eng): Audio: aac (LC), 48000 Hz, 5.1(side), fltp") == 6
    assert audio.channels_in("Stream #0:0: Audio: pcm_s16le, 16000 Hz, 4 channels, s16") == 4
    # The plan: a unit per channel of the stereo files (each its own unit id), one for the mono file.
    units = channels.split_channels(inputs.expand([str(calls)]))
    rows = sorted((Path(r["uri"]).name, r["channel"], r["unit_id"]) for r in units.to_pylist())
    assert [(name, ch) for name, ch, _ in rows] == [("call.wav", 0), ("call.wav", 1), ("dual.wav", 0),
                                                     ("dual.wav", 1), ("mono.flac", None)]
    assert len({uid for _, _, uid in rows}) == 5


@pytest.mark.slow
def test_each_channel_is_its_own_utterance(split_run, references):
    out = open_output(str(split_run))
    files = {(r["uri"].rsplit("/", 1)[1], r["channel"]): r for r in
             out.sql("select * from files").to_arrow_table().to_pylist()}
    assert set(files) == {("call.wav", 0), ("call.wav", 1), ("dual.wav", 0), ("dual.wav", 1), ("mono.flac", None)}
    assert all(r["status"] == "ok" for r in files.values())
    assert len({r["unit_id"] for r in files.values()}) == 5

    def text(name: str, channel: int | None) -> str:
        condition = "channel is null" if channel is None else f"channel = {channel}"
        rows = out.sql(f"select text from segments where uri like '%/{name}' and {condition} "
                       "order by start").fetchall()
        return " ".join(t for (t,) in rows)

    assert wer([references[LEFT]], [text("call.wav", 0)]) <= 0.15
    assert wer([references[RIGHT]], [text("call.wav", 1)]) <= 0.15
    # Nothing of one channel's speaker in the other's text.
    assert "dark suit" not in text("call.wav", 1).lower() and "greasy" not in text("call.wav", 1).lower()


@pytest.mark.slow
def test_a_dual_mono_file_costs_one_transcription(split_run):
    out = open_output(str(split_run))
    rows = out.sql("select channel, same_as_channel, segments, transcribe_s from files "
                   "where uri like '%/dual.wav' order by channel").fetchall()
    (first, second) = rows
    assert first[0] == 0 and first[1] is None and first[2] >= 1 and first[3] > 0
    assert second[0] == 1 and second[1] == 0 and second[2] == 0 and second[3] is None  # not transcribed
    assert out.sql("select count(*) from segments where uri like '%/dual.wav' and channel = 1").fetchall()[0] == (0,)


@pytest.mark.slow
def test_the_conversation_rebuilt_by_a_query_and_by_exports(split_run, tmp_path):
    out = open_output(str(split_run))
    turns = out.sql("select channel, start, text from segments where uri like '%/call.wav' "
                    "order by start, channel").fetchall()
    assert [c for c, _, _ in turns][:2] == [0, 1] and len({c for c, _, _ in turns}) == 2
    from pipeline.export import export

    for fmt in ("srt", "vtt", "txt", "tsv", "json"):
        (path,) = [p for p in export(out, fmt, str(tmp_path / fmt)) if Path(p).stem == "call"]
        written = Path(path).read_text()
        if fmt == "srt":
            assert "[channel 0] " in written and "[channel 1] " in written
        elif fmt == "vtt":
            assert "<v channel 0>" in written and "<v channel 1>" in written
        elif fmt == "txt":
            lines = written.splitlines()
            assert lines[0].startswith("[00:00.") and ": " in lines[0]
            assert {ln.split("] ", 1)[1].split(":")[0] for ln in lines} == {"channel 0", "channel 1"}
        elif fmt == "tsv":
            assert written.splitlines()[0] == "start\tend\tchannel\ttext"
        else:
            assert {s["channel"] for s in json.loads(written)["segments"]} == {0, 1}
    # The mono file's export stays as it was: no labels.
    (mono,) = [p for p in export(out, "srt", str(tmp_path / "mono")) if Path(p).stem == "mono"]
    assert "[channel" not in Path(mono).read_text()


@pytest.mark.slow
def test_the_default_mixes_down(calls, tmp_path):
    out = tmp_path / "out"
    run_ok(calls, out)
    rows = open_output(str(out)).sql("select uri, channel from files").fetchall()
    assert len(rows) == 3 and all(channel is None for _, channel in rows)


@pytest.mark.slow
def test_channel_units_through_a_crash_and_resume(calls, split_run, tmp_path):
    out = tmp_path / "out"
    code, _, _ = finish(start(calls, out, "--channels", "split", "--shard-minutes", "0.05",
                              env={"BULKSCRIBE_CRASH_AT": "after_parts_write"}))
    assert code == -signal.SIGKILL
    stdout = run_ok(calls, out)  # the folder's own option: split
    assert "this run: " in stdout
    check_output(out, split_run)
    assert open_output(str(out)).sql("select count(*) from files where channel is not null").fetchall()[0] == (4,)


@pytest.mark.slow
def test_a_folder_written_before_the_channel_columns_reads_verifies_and_resumes(calls, tmp_path, speech_dir):
    """A folder as an earlier version left it: parts without `channel` and
    `same_as_channel`, markers without `staged`."""
    import hashlib

    import pyarrow.parquet as pq

    from pipeline.parquet import parquet_bytes
    from pipeline.verify import verify

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(calls / "mono.flac", inputs / "mono.flac")
    out = tmp_path / "out"
    run_ok(inputs, out)
    store = OutputStore(str(out))
    for marker_path in (out / "_commits").glob("*.json"):
        marker = json.loads(marker_path.read_text())
        marker.pop("staged", None)
        shard = marker["shard"]
        for table in ("segments", "files"):
            path = Path(store.part_path(table, shard))
            old = pq.read_table(path)
            old = old.drop_columns([c for c in ("channel", "same_as_channel") if c in old.column_names])
            data = parquet_bytes(old)
            path.write_bytes(data)
            marker["parts"][table].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                          md5=hashlib.md5(data).hexdigest())
        marker_path.write_text(json.dumps(marker))
    shutil.rmtree(out / "_index")
    assert verify(store, reparse=True).ok
    assert open_output(str(out)).sql("select count(*), count(channel) from segments").fetchall()[0][1] == 0
    # Resumed with a new file: old parts and new ones side by side.
    shutil.copy(calls / "call.wav", inputs / "call.wav")
    run_ok(inputs, out, "--rescan")
    assert verify(store, reparse=True).ok
    views = open_output(str(out))
    assert views.sql("select count(distinct uri) from files").fetchall()[0] == (2,)
    assert views.sql("select count(*) from files where channel is not null").fetchall()[0] == (0,)  # mixed, as planned

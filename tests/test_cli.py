"""The `bulkscribe` command as a user runs it: a subprocess that starts its own Ray."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.arguments import build_parser, spec_from_args


def bulkscribe(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_arguments_become_a_spec():
    args = build_parser().parse_args(
        ["run", "a", "s3://b/c", "-o", "out", "--beam-size", "1", "--vad", "--threads", "2", "--actors", "3",
         "--storage-option", "endpoint_url=http://127.0.0.1:9000", "--storage-option", "anon=true", "--shard-minutes", "5"]
    )
    spec = spec_from_args(args)
    assert spec.inputs == ("a", "s3://b/c") and spec.output == "out"
    assert (spec.whisper.beam_size, spec.whisper.vad, spec.actors.threads, spec.actors.actors) == (1, True, 2, 3)
    assert spec.storage_options == {"endpoint_url": "http://127.0.0.1:9000", "anon": True}
    assert spec.shard_audio_s == 300


@pytest.mark.slow
def test_run_status_and_rerun_from_the_command_line(tmp_path, small_corpus):
    out = tmp_path / "out"
    first = bulkscribe("run", str(small_corpus), "--output", str(out), "--beam-size", "1")
    assert first.returncode == 0, first.stderr
    assert "files:   3 ok, 1 no_speech, 0 failed" in first.stdout
    assert "4 shard(s) transcribed" in first.stdout or "transcribed, 0 already committed" in first.stdout
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    quoted = duckdb.sql(f"select text from '{out}/segments/*.parquet' where uri like '%pwned%'").fetchall()
    assert "hester" in " ".join(t for (t,) in quoted).lower()

    # No decoding option given: the rerun takes the folder's (beam 1), not the defaults.
    again = bulkscribe("run", str(small_corpus), "--output", str(out))
    assert again.returncode == 0, again.stderr
    assert "options not given follow the folder's job: beam_size=1" in again.stderr
    assert "this run: 0 shard(s) transcribed" in again.stdout
    assert "Started a local Ray instance" not in again.stderr  # no Ray when nothing is left to do

    status = bulkscribe("status", str(out))
    assert status.returncode == 0 and "(complete)" in status.stdout and "3 ok, 1 no_speech" in status.stdout
    verified = bulkscribe("verify", str(out))
    assert verified.returncode == 0 and re.match(r"OK: (\d+)/\1 shards committed, 4/4 units", verified.stdout)
    assert re.search(r"rows read in 0 of \d+ shards", verified.stdout)  # their writer checked them
    reparsed = bulkscribe("verify", str(out), "--reparse")
    assert reparsed.returncode == 0 and reparsed.stdout.splitlines()[0] == verified.stdout.splitlines()[0]

    refused = bulkscribe("run", str(small_corpus), "--output", str(out), "--beam-size", "5")
    assert refused.returncode == 2
    assert "beam_size: 1 in the folder, 5 now" in refused.stderr and "Traceback" not in refused.stderr


def test_errors_are_one_clear_line(tmp_path):
    missing = bulkscribe("run", str(tmp_path / "nope"), "--output", str(tmp_path / "out"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr
    bad_model = bulkscribe("run", str(tmp_path), "--output", str(tmp_path / "o"), "--beam-size", "0")
    assert bad_model.returncode == 2 and "beam_size must be >= 1, got 0" in bad_model.stderr
    no_job = bulkscribe("status", str(tmp_path))
    assert no_job.returncode == 2 and "no bulkscribe job" in no_job.stderr


def test_a_file_where_a_folder_belongs_and_mistyped_options_are_one_clear_line(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for argv in (["run", str(tmp_path), "--output", str(a_file)], ["status", str(a_file)],
                 ["export", str(tmp_path), "--format", "srt", "--to", str(a_file)]):
        done = bulkscribe(*argv)
        assert done.returncode == 2 and f"{a_file} is a file, not an" in done.stderr, argv
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    typo = bulkscribe("run", str(tmp_path), "-o", str(tmp_path / "o"), "--beam-szie", "2")
    assert typo.returncode == 2 and "usage: bulkscribe run" in typo.stderr
    assert "unrecognized option --beam-szie; did you mean --beam-size?" in typo.stderr
    # A mistyped required option: named as such, not as a missing --output.
    hidden = bulkscribe("run", str(tmp_path), "--ouput", str(tmp_path / "o"))
    assert hidden.returncode == 2 and "did you mean --output?" in hidden.stderr and "required" not in hidden.stderr
    other = bulkscribe("status", str(tmp_path), "--node-prize=2")
    assert other.returncode == 2 and "usage: bulkscribe status" in other.stderr and "--node-price?" in other.stderr
    assert not (tmp_path / "o").exists()


def test_a_summary_shows_one_line_per_error_type_and_how_to_retry():
    from pipeline.report import Summary, format_summary

    ffmpeg = "[mp3 @ 0x5] Failed to find two consecutive MPEG audio frames.\n[in#0 @ 0x6] Error opening input\n" * 9
    summary = Summary(output="out", shards_planned=1, shards_committed=1, units_planned=2, units_done=2, ok=1,
                      no_speech=0, failed=1, audio_s=10.0, wall_s=5.0, failures={"decode_error": (1, ffmpeg)},
                      shards_ran=1, shards_skipped=0, retried=1)
    text = format_summary(summary, this_run=True)
    failed = [line for line in text.splitlines() if line.startswith("failed:")]
    assert failed == [failed[0]] and failed[0].startswith("failed:  1 x decode_error, e.g. [mp3 @ 0x5] Failed")
    assert len(failed[0]) < 240 and failed[0].endswith("...")
    assert "retried: 1 failed file(s) of 1 shard(s); 1 still failing: 1 x decode_error" in text
    assert "retry:   bulkscribe retry-failed out" in text


@pytest.mark.slow
def test_a_file_that_fails_again_says_so_after_retry_failed(tmp_path, speech_dir):
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(speech_dir / "misc" / "jfk.flac", src)
    (src / "noise.wav").write_bytes(bytes(range(256)) * 64)  # not a WAV, whatever its name
    out = tmp_path / "out"
    first = bulkscribe("run", str(src), "--output", str(out), "--no-progress")
    assert first.returncode == 3, first.stderr  # complete, with failed files
    assert "files:   1 ok, 0 no_speech, 1 failed" in first.stdout, first.stderr
    assert f"retry:   bulkscribe retry-failed {out}" in first.stdout
    again = bulkscribe("retry-failed", str(out), "--no-progress")
    assert again.returncode == 3 and "Traceback" not in again.stderr
    assert "retried: 1 failed file(s) of 1 shard(s); 1 still failing: 1 x decode_error" in again.stdout
    assert "failed:  1 x decode_error, e.g. " in again.stdout and "not a WAV file" in again.stdout
    assert len([line for line in again.stdout.splitlines() if line.startswith("failed:")]) == 1


def test_models_lists_the_bundled_models():
    listed = bulkscribe("models")
    assert listed.returncode == 0 and "tiny.en" in listed.stdout and "base" in listed.stdout


def test_version():
    shown = bulkscribe("--version")
    assert shown.returncode == 0 and shown.stdout.startswith("bulkscribe ") and shown.stdout.split()[1][0].isdigit()


def test_bad_options_are_refused_before_anything_is_written(tmp_path, small_corpus):
    out = tmp_path / "out"
    missing = bulkscribe("run", str(tmp_path / "nope"), "--output", str(out))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    unknown = bulkscribe("run", str(small_corpus), "--output", str(out), "--language", "xx")
    assert unknown.returncode == 2 and "unknown language code 'xx'" in unknown.stderr
    english_only = bulkscribe("run", str(small_corpus), "--output", str(out), "--language", "de")
    assert english_only.returncode == 2 and "tiny.en is an English-only model" in english_only.stderr
    for refused in (missing, unknown, english_only):
        assert "Traceback" not in refused.stderr
    assert not out.exists()


def test_bad_sql_is_one_clear_line(transcribed):
    query = bulkscribe("query", str(transcribed), "selec uri form files")
    assert query.returncode == 2 and "the SQL failed" in query.stderr and "syntax error" in query.stderr
    assert "Traceback" not in query.stderr
    export = bulkscribe("export", str(transcribed), "--format", "srt", "--where", "no_such_column = 1")
    assert export.returncode == 2 and "the SQL failed" in export.stderr and "no_such_column" in export.stderr
    assert "Traceback" not in export.stderr


def test_export_writes_no_empty_subtitles_and_times_are_whole_milliseconds(transcribed, tmp_path):
    from pipeline.query import open_output

    srt = bulkscribe("export", str(transcribed), "--format", "srt", "--to", str(tmp_path / "srt"))
    assert srt.returncode == 0, srt.stderr
    names = sorted(p.name for p in (tmp_path / "srt").rglob("*.srt"))
    assert names and "empty_noise.srt" not in names and all(p.stat().st_size > 0 for p in (tmp_path / "srt").rglob("*.srt"))
    assert "without segments" in srt.stderr
    js = bulkscribe("export", str(transcribed), "--format", "json", "--to", str(tmp_path / "json"))
    assert js.returncode == 0 and (tmp_path / "json" / "misc" / "empty_noise.json").exists()
    segments = open_output(str(transcribed)).segments.to_table().to_pylist()
    assert segments and all(round(s[k], 3) == s[k] for s in segments for k in ("start", "end"))


def test_abbreviated_options_are_refused_not_forwarded(capsys):
    # `submit` forwards the run's options as written: an abbreviation read as --wait here
    # would reach the cluster's `run` as an unknown option.
    for argv in (["submit", "in", "-o", "out", "--addr", "http://h:8265", "--wai"], ["run", "in", "-o", "out", "--beam", "1"]):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_submit_forwards_the_run_options_and_absolute_local_paths(monkeypatch, tmp_path, small_corpus, capsys):
    from pipeline import cli, submit

    sent = {}

    class Submission:
        job_id = "raysubmit_test"

        def follow_commands(self):
            return ["ray job logs ..."]

    def fake_submit(address, run_args, storage_urls, *, pip=True):
        sent.update(address=address, run_args=run_args, storage_urls=storage_urls, pip=pip)
        return Submission()

    monkeypatch.setattr(submit, "submit", fake_submit)
    monkeypatch.chdir(small_corpus.parent)
    code = cli.main(["submit", small_corpus.name, "s3://bucket/in", "--output", "out", "--address", "http://head:8265",
                     "--beam-size", "1", "--no-pip", "--storage-option", "endpoint_url=http://minio:9000"])
    assert code == 0 and "submitted raysubmit_test" in capsys.readouterr().out
    assert sent["address"] == "http://head:8265" and sent["pip"] is False
    # Submitting's own options stay here; the run's reach the job as written, local paths made absolute.
    assert sent["run_args"] == [str(small_corpus), "s3://bucket/in", "--output", str(small_corpus.parent / "out"),
                                "--beam-size", "1", "--storage-option", "endpoint_url=http://minio:9000"]

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

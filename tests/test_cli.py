"""The `bulkscribe` command as a user runs it: a subprocess that starts its own Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline.cli import build_parser, spec_from_args


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

    again = bulkscribe("run", str(small_corpus), "--output", str(out), "--beam-size", "1")
    assert again.returncode == 0, again.stderr
    assert "this run: 0 shard(s) transcribed" in again.stdout
    assert "Started a local Ray instance" not in again.stderr  # no Ray when nothing is left to do

    status = bulkscribe("status", str(out))
    assert status.returncode == 0 and "(complete)" in status.stdout and "3 ok, 1 no_speech" in status.stdout

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

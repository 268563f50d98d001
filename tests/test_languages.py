"""Files in other languages, in one run: transcribed by the multilingual model in their own
language (routed), or flagged; reruns and retries keep the folder's choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from pipeline.config import JobSpec, WhisperOptions

pytestmark = pytest.mark.slow

HARD = Path(__file__).parent / "data" / "hard"
FOREIGN = ("short/ru_conf-getconfno.wav", "multilingual/zh_aishell-BAC009S0724W0121.wav")


def rows(out: Path) -> dict[str, tuple]:
    """file name -> (model, language, flags, status, text) of each `files` row."""
    found = duckdb.sql(
        f"select f.uri, f.model, f.language, f.flags, f.status, coalesce(string_agg(s.text, '' order by s.segment), '') "
        f"from '{out}/files/*.parquet' f left join '{out}/segments/*.parquet' s using (unit_id) group by all").fetchall()
    return {Path(uri).name: tuple(rest) for uri, *rest in found}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, speech_dir) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    for rel in ("misc/LDC93S1.wav", "librispeech/1089-134691-0000.flac"):
        shutil.copy(speech_dir / rel, folder / Path(rel).name)
    shutil.copy(HARD / "short" / "one_two_three.wav", folder / "one_two_three.wav")
    for rel in FOREIGN:
        shutil.copy(HARD / rel, folder / Path(rel).name)
    return folder


def test_files_in_other_languages_are_transcribed_in_their_own_language_in_the_same_run(
        ray_cluster, mixed, tmp_path, monkeypatch):
    from pipeline import audio, compact, models
    from pipeline.job import retry_failed, run
    from pipeline.report import format_summary
    from pipeline.transcriber import Transcriber

    # A foreign file, missing at the first run, arrives before retry-failed.
    inputs = tmp_path / "in"
    shutil.copytree(mixed, inputs)
    late = inputs / "ru_vm-goodbye.wav"
    out = tmp_path / "out"
    manifest = tmp_path / "files.txt"
    manifest.write_text("\n".join(sorted(str(p) for p in inputs.iterdir()) + [str(late)]) + "\n")
    monkeypatch.setattr(compact, "COMPACT_AT_SHARDS", 10**6)
    summary = run(JobSpec(inputs=(str(manifest),), output=str(out), progress=False))
    found = rows(out)
    base = Transcriber(models.resolve("base").path, WhisperOptions(), cpu_threads=1)
    for rel in FOREIGN:
        name = Path(rel).name
        model, language, flags, status, text = found[name]
        alone = base.transcribe(audio.decode(str(inputs / name)).samples)
        assert (model, language, status) == ("base", alone.language, "ok"), found[name]
        assert text == "".join(s.text for s in alone.segments)  # what --model base gives the file
        assert language in ("ru", "zh") and "language_mismatch" not in flags
    for name in ("LDC93S1.wav", "1089-134691-0000.flac", "one_two_three.wav"):
        assert found[name][:2] == ("tiny.en", "en") and found[name][3] == "ok", found[name]
    assert found["ru_vm-goodbye.wav"][3] == "failed"
    from pipeline.store import OutputStore
    from pipeline.verify import verify

    assert verify(OutputStore(str(out))).ok
    text = format_summary(summary)
    assert "languages: 3 en, " in text and "1 ru by base" in text and "1 zh by base" in text, text
    assert "(2 file(s) in another language transcribed by its model)" in text, text
    job = json.loads((out / "job.json").read_text())
    assert job["fingerprint_fields"]["other_languages"] == "route"
    assert job["fingerprint_fields"]["route_model_sha256"] == models.resolve("base").sha256

    shutil.copy(HARD / "short" / "ru_vm-goodbye.wav", late)
    retried = retry_failed(str(out))
    after = rows(out)
    assert (retried.ok, retried.failed) == (6, 0)
    assert after["ru_vm-goodbye.wav"][:2] == ("base", "ru") and after["ru_vm-goodbye.wav"][3] == "ok"
    assert {k: v for k, v in after.items() if k != "ru_vm-goodbye.wav"} == \
        {k: v for k, v in found.items() if k != "ru_vm-goodbye.wav"}

    # A rerun of the folder keeps routing; a shard run again gives the same rows.
    for marker in (out / "_commits").glob("*.json"):
        marker.unlink()
    again = run(JobSpec(inputs=(str(manifest),), output=str(out), progress=False, whisper_given=frozenset()))
    assert again.shards_ran >= 1 and rows(out) == after


def test_flag_keeps_the_english_models_text_and_a_forced_language_routes_nothing(ray_cluster, mixed, tmp_path):
    from pipeline.job import run

    out = tmp_path / "flag"
    run(JobSpec(inputs=(str(mixed),), output=str(out), whisper=WhisperOptions(other_languages="flag"),
                progress=False))
    found = rows(out)
    for rel in FOREIGN:
        model, _, flags, status, _ = found[Path(rel).name]
        assert model == "tiny.en" and "language_mismatch" in flags, found
    assert "other_languages" not in json.loads((out / "job.json").read_text())["fingerprint_fields"]
    # verify: a folder that flags holds no file of another model.
    from pipeline.store import OutputStore
    from pipeline.verify import verify

    assert verify(OutputStore(str(out))).ok
    marker = next((out / "_commits").glob("*.json"))
    data = json.loads(marker.read_text())
    data["languages"] = {**data["languages"], "ru base": 1}
    marker.write_text(json.dumps(data))
    assert any("transcribed by model base, which this job does not route" in p
               for p in verify(OutputStore(str(out))).problems)

    forced = tmp_path / "forced"
    run(JobSpec(inputs=(str(mixed),), output=str(forced), whisper=WhisperOptions(language="en"), progress=False))
    assert {r[0] for r in rows(forced).values()} == {"tiny.en"}

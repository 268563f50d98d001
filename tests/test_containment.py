"""Nothing an input listing, a manifest or a planted link holds makes bulkscribe write or
delete outside its output folder (or an export outside its target)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from pipeline.export import target_names
from pipeline.store import OutputStore, UnsafeOutputError
from tests.helpers import finish, run_ok, start
from pipeline.publish import write_part_bytes


def files_below(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_path_with_dotdot_is_neither_written_nor_deleted(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with pytest.raises(UnsafeOutputError, match="outside the output folder"):
        store.write_bytes(store.path("segments", "..", "..", "victim.txt"), b"overwritten")
    with pytest.raises(UnsafeOutputError):
        store.create_only(store.path("..", "victim.txt"), b"overwritten")
    with pytest.raises(UnsafeOutputError):
        store.delete(store.path("_index", "..", "..", "victim.txt"))
    assert victim.read_text() == "keep me"


def test_a_folder_linked_out_of_the_output_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "segments").symlink_to(outside)
    store = OutputStore(str(out))
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        store.refuse_links_out()
    with pytest.raises(UnsafeOutputError, match="symbolic link"):
        write_part_bytes(store, "segments", 0, b"x", 0)
    assert list(outside.iterdir()) == []
    # A link that stays inside the folder is the user's business.
    (out / "segments").unlink()
    (out / "elsewhere").mkdir()
    (out / "segments").symlink_to(out / "elsewhere")
    OutputStore(str(out)).refuse_links_out()


def test_export_names_stay_below_the_target_whatever_the_uris():
    uris = ["file:///data/a/../../../../etc/passwd.wav", "s3://bucket/../../x.wav", "file:///data/line\nbreak.wav",
            "file:///data/./b/../c.wav", "https://host/..", "file:///data/a.wav"]
    names = target_names(uris, "srt")
    assert len(set(names.values())) == len(uris)
    for name in names.values():
        assert not name.startswith("/") and ".." not in name.split("/") and "\n" not in name, name
        assert os.path.normpath(os.path.join("/target", name)).startswith("/target/"), name


@pytest.mark.slow
def test_hostile_names_and_planted_links_never_lead_a_run_out_of_its_folder(tmp_path, speech_dir):
    """A real run and export of a manifest naming files through `..` and with a newline
    in a name, into a folder where links were planted: a link to another folder refuses
    the run (exit 2, one line); links at a part's or the lease's name are replaced, their
    targets untouched; the export writes below its target only."""
    corpus = tmp_path / "in" / "deep"
    corpus.mkdir(parents=True)
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", corpus / "line\nbreak.wav")
    shutil.copy(speech_dir / "librispeech" / "1089-134691-0000.flac", tmp_path / "in" / "up.flac")
    manifest = tmp_path / "in" / "deep" / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path"])
        writer.writerow(["line\nbreak.wav"])
        writer.writerow(["../deep/../up.flac"])
    victims = tmp_path / "victims"
    victims.mkdir()
    for name in ("part.parquet", "lease.json", "kept.txt"):
        (victims / name).write_text(f"the {name} outside must stay as it is")
    before = files_below(victims)

    out = tmp_path / "out"
    out.mkdir()
    (out / "_commits").symlink_to(victims)
    code, stdout, stderr = finish(start(manifest, out))
    assert code == 2 and "symbolic link" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert not (out / "job.json").exists()

    (out / "_commits").unlink()
    (out / "segments").mkdir()
    (out / "segments" / "part-000000.parquet").symlink_to(victims / "part.parquet")
    (out / "_lease.json").symlink_to(victims / "lease.json")
    run_ok(manifest, out)
    assert files_below(victims) == before
    import duckdb

    uris = sorted(r[0] for r in duckdb.sql(f"select uri from '{out}/files/*.parquet'").fetchall())
    assert uris == sorted([str(corpus / "line\nbreak.wav"), str(tmp_path / "in" / "up.flac")])
    assert not (out / "segments" / "part-000000.parquet").is_symlink()

    target = tmp_path / "export" / "srt"
    target.mkdir(parents=True)
    done = finish(start_export(out, target))
    assert done[0] == 0, done[2][-2000:]
    written = [p for p in (tmp_path / "export").rglob("*") if p.is_file()]
    assert len(written) == 2 and all(target in p.parents for p in written), written
    assert files_below(victims) == before


def start_export(out: Path, target: Path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "export", str(out), "--format", "srt",
                             "--to", str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})

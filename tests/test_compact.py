"""Compacted copies of the parts: the views read them and show exactly the committed rows."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import compact
from pipeline.index import all_markers, index_entries, unindex, update_index
from pipeline.markers import read_marker
from pipeline.parquet import parquet_bytes
from pipeline.publish import write_part
from pipeline.query import open_output
from pipeline.records import CommitMarker
from pipeline.store import OutputStore


def rows(folder, table: str) -> list[tuple]:
    """Every row of a view, in a fixed order, compared as text."""
    out = open_output(str(folder))
    return sorted(out.sql(f"select * from {table}").fetchall(), key=repr)


def reads(folder, table: str) -> list[str]:
    """The files a view of `table` reads, relative to the folder."""
    out = open_output(str(folder))
    return sorted(p[len(str(folder)) + 1:] for p in out._parts(table))


@pytest.fixture
def folder(transcribed, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(transcribed, copy)
    return copy


def replace_part(folder, table: str, shard: int, new: pa.Table) -> None:
    """Write a shard's part again and its marker to match, as `retry-failed` does (the
    index loses the shard first; the run's end writes it back)."""
    store = OutputStore(str(folder))
    unindex(store, [shard])
    part = write_part(store, table, shard, new)
    marker = read_marker(store, shard).to_json()
    marker["parts"][table] = part.to_json()
    store.write_json(store.marker_path(shard), CommitMarker.from_json(marker).to_json())
    update_index(store)


def test_the_command_copies_every_shard_and_the_views_give_the_same_rows(folder):
    before = {t: rows(folder, t) for t in ("segments", "files")}
    parts = sorted(p.name for p in (folder / "segments").glob("*.parquet"))
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "compact", str(folder)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shards = len(list((folder / "_commits").glob("*.json")))
    assert f"{shards} shard(s) copied into 2 compacted file(s)" in result.stdout
    for table in ("segments", "files"):
        assert [p.split("/")[:2] for p in reads(folder, table)] == [["_index", table]]  # one file, no part
        assert rows(folder, table) == before[table]
    # The parts, the output contract's files, are all still there.
    assert sorted(p.name for p in (folder / "segments").glob("*.parquet")) == parts
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "compact", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.startswith("0 shard(s) copied into 0 compacted file(s), 0 file(s) no longer used")


def test_a_replaced_part_is_read_from_its_shard_until_compacted_again(folder):
    store = OutputStore(str(folder))
    compact.compact(store)
    files = pq.read_table(folder / "files" / "part-000000.parquet")
    renamed = files.set_column(files.schema.get_field_index("node"), "node", pa.array(["elsewhere"] * files.num_rows))
    replace_part(folder, "files", 0, renamed)

    # The compacted files file holds shard 0's old rows: the view reads every shard's part.
    assert reads(folder, "files") == sorted(f"files/{p.name}" for p in (folder / "files").glob("*.parquet"))
    assert reads(folder, "segments")[0].startswith("_index/segments/")  # untouched
    nodes = open_output(str(folder)).sql("select shard, node from files").fetchall()
    assert len(nodes) == 4 and {n for s, n in nodes if s == 0} == {"elsewhere"}
    assert "elsewhere" not in {n for s, n in nodes if s != 0}

    done = compact.compact(store)
    # The old file is written again without shard 0 (from itself), shard 0 goes to a new one.
    assert (done.shards, done.files, done.dropped, done.waiting) == (1, 2, 1, 0)
    assert all(p.startswith("_index/files/") for p in reads(folder, "files"))
    assert sorted(open_output(str(folder)).sql("select shard, node from files").fetchall()) == sorted(nodes)
    # Two files named, and the old one kept for readers that opened the folder before.
    assert len(list((folder / "_index" / "files").glob("*.parquet"))) == 3


def test_a_file_left_out_is_deleted_once_readers_had_time(folder, monkeypatch):
    store = OutputStore(str(folder))
    compact.compact(store)
    [old] = reads(folder, "files")
    reader = open_output(str(folder))  # holds the catalog as it is now
    files = pq.read_table(folder / "files" / "part-000000.parquet")
    renamed = files.set_column(files.schema.get_field_index("node"), "node", pa.array(["elsewhere"] * files.num_rows))
    replace_part(folder, "files", 0, renamed)
    done = compact.compact(store)
    assert (done.dropped, done.deleted) == (1, 0)
    assert old not in reads(folder, "files")
    # The reader that opened the folder before reads the file it was given.
    assert [p[len(str(folder)) + 1:] for p in reader._parts("files")] == [old]
    assert reader.sql("select count(*) from files").fetchall() == [(4,)]
    assert list(json.loads((folder / "_index" / "retired.json").read_text())) == [old]

    # Once the time is up, the next compaction deletes it, and a file a crashed compaction
    # wrote but never named is left out and deleted in time too.
    orphan = folder / "_index" / "files" / "000000-000003-0123abcd.parquet"
    shutil.copy(folder / old, orphan)
    monkeypatch.setattr(compact, "RETIRED_KEEP_S", 0.0)
    done = compact.compact(store)
    assert (done.shards, done.files, done.dropped, done.deleted) == (0, 0, 0, 2)
    assert not (folder / old).exists() and not orphan.exists()
    assert json.loads((folder / "_index" / "retired.json").read_text()) == {}
    assert sorted(f"_index/files/{p.name}" for p in (folder / "_index" / "files").glob("*.parquet")) == reads(folder, "files")


def test_a_shard_whose_marker_went_is_not_shown_from_a_compacted_file(folder):
    store = OutputStore(str(folder))
    compact.compact(store)
    (folder / "_commits" / "000000.json").unlink()  # shard 0 no longer committed
    out = open_output(str(folder))
    assert 0 not in {s for (s,) in out.sql("select distinct shard from files").fetchall()}
    assert 0 not in {s for (s,) in out.sql("select distinct shard from segments").fetchall()}
    assert out.files.count_rows() == out.sql("select count(*) from files").fetchall()[0][0] < 4


def test_a_part_that_differs_from_its_marker_is_not_copied(folder, caplog):
    store = OutputStore(str(folder))
    part = folder / "segments" / "part-000000.parquet"
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 1), part)  # a segment lost behind the marker's back
    with caplog.at_level(logging.WARNING, logger="pipeline.compact"):
        done = compact.compact(store)
    assert "segments part of shard 000000 differs from its marker" in caplog.text
    assert done.waiting == 1
    catalog = compact.read_catalog(store)
    segments = catalog.filter(pc.equal(catalog.column("table"), "segments"))
    assert 0 not in segments.column("shard").to_pylist()
    assert "segments/part-000000.parquet" in reads(folder, "segments")  # as it is, for verify to report


def test_groups_are_cut_by_shard_count_and_bytes(monkeypatch):
    monkeypatch.setattr(compact, "SHARDS_PER_FILE", 3)
    monkeypatch.setattr(compact, "PART_BYTES_PER_FILE", 100)
    sizes = {1: 10, 2: 10, 3: 10, 4: 10, 5: 90, 6: 500, 7: 1}
    assert compact._groups(sorted(sizes), sizes) == [[1, 2, 3], [4, 5], [6], [7]]


def test_a_shard_in_two_compacted_files_is_read_from_the_first_only(folder):
    store = OutputStore(str(folder))
    compact.compact(store)
    catalog = compact.read_catalog(store)
    first = catalog.filter(pc.equal(catalog.column("table"), "files")).slice(0, 1)
    copy = first.set_column(1, "file", pa.array(["_index/files/zzz.parquet"]))
    shutil.copy(folder / first.column("file")[0].as_py(), folder / "_index" / "files" / "zzz.parquet")
    store.write_bytes(compact.catalog_path(store), parquet_bytes(pa.concat_tables([catalog, copy])))
    assert open_output(str(folder)).sql("select count(*) from files").fetchall()[0][0] == 4


def test_markers_index_entries_give_the_parts(folder):
    store = OutputStore(str(folder))
    parts = compact.indexed_parts(index_entries(store))
    for marker in all_markers(store):
        for table in ("segments", "files"):
            assert parts[table][marker.shard] == marker.parts[table]
    assert json.loads(next(iter(index_entries(store).values())))["parts"]


def test_verify_checks_the_compacted_files_the_views_read(folder):
    from pipeline.verify import verify

    store = OutputStore(str(folder))
    compact.compact(store)
    assert verify(store).ok
    catalog = compact.read_catalog(store)
    segments_file = folder / catalog.filter(pc.equal(catalog.column("table"), "segments")).column("file")[0].as_py()
    table = pq.read_table(segments_file)
    first = table.column("shard")[0].as_py()
    pq.write_table(table.slice(1), segments_file)  # one segment of the first shard gone from the copy
    n = table.column("shard").to_pylist().count(first)
    problems = verify(store).problems
    assert problems == [f"compacted file {segments_file.relative_to(folder)} holds {n - 1} row(s) of shard {first}, "
                        f"whose segments part has {n}"]

    files_file = folder / catalog.filter(pc.equal(catalog.column("table"), "files")).column("file")[0].as_py()
    files_file.unlink()
    assert open_output(str(folder)).sql("select count(*) from files").fetchall()[0][0] == 4  # from the parts
    assert any("is named in _index/compacted.parquet but gone" in p for p in verify(store).problems)
    done = compact.compact(store)  # copies the shards of the file that is gone again
    assert done.dropped == 1 and done.shards >= 1 and done.waiting == 0
    assert open_output(str(folder)).sql("select count(*) from files").fetchall()[0][0] == 4
    assert all(p.startswith("_index/files/") for p in reads(folder, "files"))

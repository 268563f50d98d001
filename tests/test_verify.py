"""`verify` is the oracle of every fault test: here it is shown each breach it must report."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.index import all_markers, indexed_markers, write_index
from pipeline.publish import write_part
from pipeline.store import OutputStore
from pipeline.verify import verify

pytestmark = pytest.mark.slow


@pytest.fixture
def out(transcribed, tmp_path):
    """A private copy of a real, complete output folder."""
    copy = tmp_path / "out"
    shutil.copytree(transcribed, copy)
    assert verify(OutputStore(str(copy))).ok
    return copy


def _shard_with_segments(out) -> int:
    for part in sorted((out / "segments").glob("part-*.parquet")):
        if pq.read_table(part).num_rows >= 2:
            return int(part.stem.split("-")[1])
    raise AssertionError("no shard with two segments")


def _rewrite(out, table: str, shard: int, change, *, fix_marker: bool) -> None:
    """Rewrite a part through `change`; with `fix_marker`, make the marker agree, so that
    only the change itself is wrong."""
    store = OutputStore(str(out))
    path = out / table / f"part-{shard:06d}.parquet"
    new = change(pq.read_table(path))
    written = write_part(store, table, shard, new)
    marker_path = out / "_commits" / f"{shard:06d}.json"
    marker = json.loads(marker_path.read_text())
    if fix_marker:
        marker["parts"][table] = written.to_json()
        marker_path.write_text(json.dumps(marker))


def _problems(out) -> str:
    result = verify(OutputStore(str(out)))
    assert not result.ok
    assert verify(OutputStore(str(out)), reparse=True).format() == result.format()
    return "\n".join(result.problems)


def test_a_duplicated_segment(out):
    shard = _shard_with_segments(out)
    first = pq.read_table(out / "segments" / f"part-{shard:06d}.parquet").slice(0, 1).to_pylist()[0]
    _rewrite(out, "segments", shard, lambda t: pa.concat_tables([t, t.slice(0, 1)]), fix_marker=True)
    problems = _problems(out)
    assert f"segment {first['segment']} of unit {first['unit_id']} appears 2 times" in problems
    assert f"unit {first['unit_id']}: files says" in problems and "sha256" not in problems


def test_a_segment_moved_into_another_shards_part(out, monkeypatch):
    """Segments are checked against the units of their own shard; one moved to another
    shard is found even when the two shards are checked apart (blocks of one shard)."""
    import pipeline.verify as verifying

    monkeypatch.setattr(verifying, "BLOCK_SHARDS", 1)
    source = _shard_with_segments(out)
    target = next(int(p.stem) for p in sorted((out / "_commits").glob("*.json")) if int(p.stem) != source)
    moved = pq.read_table(out / "segments" / f"part-{source:06d}.parquet").slice(0, 1)
    uid = moved.column("unit_id")[0].as_py()
    listed = pq.read_table(out / "files" / f"part-{source:06d}.parquet").to_pylist()
    count = next(row["segments"] for row in listed if row["unit_id"] == uid)
    _rewrite(out, "segments", source, lambda t: t.slice(1), fix_marker=True)
    _rewrite(out, "segments", target, lambda t: pa.concat_tables([t, moved.cast(t.schema)]), fix_marker=True)
    problems = _problems(out)
    assert f"shard {target}: segments of unit {uid}, which its files part does not list" in problems
    assert f"unit {uid}: files says {count} segments, segments has {count - 1}" in problems


def test_a_unit_in_files_that_no_committed_shard_plans(out):
    shard = _shard_with_segments(out)
    lost = pq.read_table(out / "files" / f"part-{shard:06d}.parquet").column("unit_id")[0].as_py()

    def stranger(t: pa.Table) -> pa.Table:
        ids = ["stranger", *t.column("unit_id").to_pylist()[1:]]
        return t.set_column(t.schema.get_field_index("unit_id"), "unit_id", pa.array(ids, pa.string()))

    _rewrite(out, "files", shard, stranger, fix_marker=True)
    problems = _problems(out)
    assert "unit stranger is in files but not planned in a committed shard" in problems
    assert f"unit {lost} appears 0 times in files" in problems


def test_a_missing_part(out):
    shard = _shard_with_segments(out)
    (out / "files" / f"part-{shard:06d}.parquet").unlink()
    assert f"shard {shard}: marker exists but files part is missing" in _problems(out)


def test_a_part_that_does_not_match_its_marker(out):
    shard = _shard_with_segments(out)
    _rewrite(out, "segments", shard, lambda t: t.slice(1), fix_marker=False)
    problems = _problems(out)
    assert f"shard {shard}: sha256 of the segments part does not match its marker" in problems
    assert "rows, marker says" in problems


def test_a_torn_part_is_reported_not_raised(out):
    shard = _shard_with_segments(out)
    path = out / "segments" / f"part-{shard:06d}.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # as a copy cut short would leave it
    problems = _problems(out)
    assert f"shard {shard}: sha256 of the segments part does not match its marker" in problems
    assert f"shard {shard}: segments part cannot be read as Parquet" in problems


def test_a_unit_lost_from_files(out):
    shard = _shard_with_segments(out)
    _rewrite(out, "files", shard, lambda t: t.slice(1), fix_marker=True)
    assert "appears 0 times in files" in _problems(out)


def test_an_orphan_part_is_a_note_and_an_orphan_marker_a_problem(out):
    store = OutputStore(str(out))
    part = next((out / "segments").glob("part-*.parquet"))
    shutil.copy(part, out / "segments" / "part-000999.parquet")
    result = verify(store)
    assert result.ok and any("uncommitted shard 999" in n for n in result.notes)
    marker = next((out / "_commits").glob("*.json"))
    shutil.copy(marker, out / "_commits" / "000999.json")
    assert "marker for shard 999, which is not in the plan" in _problems(out)


def test_an_uncommitted_shard(out):
    marker = sorted((out / "_commits").glob("*.json"))[0]
    marker.unlink()
    assert f"shard {int(marker.stem)} is not committed" in _problems(out)
    assert verify(OutputStore(str(out)), require_complete=False).ok


def test_a_marker_index_that_disagrees_with_the_markers(out):
    import dataclasses

    store = OutputStore(str(out))
    markers = all_markers(store)
    assert indexed_markers(store) == {m.shard: m for m in markers}  # the run wrote it
    stale = dataclasses.replace(markers[0], statuses={"ok": 0, "no_speech": 0, "failed": markers[0].units})
    write_index(store, [stale, *markers[1:]])
    assert f"shard {markers[0].shard}: the marker index" in _problems(out)


def test_shards_checked_by_processes_report_the_same(out, monkeypatch):
    """A large local folder is checked by a process per CPU, a block of shards each: with
    blocks of one shard, this small folder goes that way, problems and all."""
    import pipeline.verify as verifying

    shards = sorted(int(p.stem) for p in (out / "_commits").glob("*.json"))
    assert len(shards) > verifying.PROCESSES_FROM_BLOCKS
    before = verify(OutputStore(str(out)))
    monkeypatch.setattr(verifying, "BLOCK_SHARDS", 1)
    spawned = []
    real = verifying.ProcessPoolExecutor
    monkeypatch.setattr(verifying, "ProcessPoolExecutor", lambda *a, **k: spawned.append(a) or real(*a, **k))
    after = verify(OutputStore(str(out)))
    assert spawned and after.ok and after.format() == before.format()
    broken = _shard_with_segments(out)
    missing = max(s for s in shards if s != broken)
    (out / "files" / f"part-{missing:06d}.parquet").unlink()
    _rewrite(out, "segments", broken, lambda t: t.slice(1), fix_marker=False)
    problems = _problems(out).splitlines()
    found = [p for p in problems if p.startswith("shard ")]
    expected = {broken: f"shard {broken}: sha256 of the segments part does not match its marker",
                missing: f"shard {missing}: marker exists but files part is missing"}
    assert [p for p in found if p in expected.values()] == [expected[s] for s in sorted(expected)]  # shard order


def test_parts_their_writer_checked_are_hashed_not_parsed(out, monkeypatch):
    """Every committed part of a run is marked checked by its writer: verify reads and
    hashes it but parses its rows only if its bytes changed or it is asked to."""
    import pipeline.shardcheck as checking  # verify parses a part's rows through it

    store = OutputStore(str(out))
    markers = all_markers(store)
    assert markers and all(p.checked for m in markers for p in m.parts.values())
    parsed = []
    real = checking.read_parquet_bytes
    monkeypatch.setattr(checking, "read_parquet_bytes", lambda *a, **k: parsed.append(a) or real(*a, **k))
    trusted = verify(store)
    assert trusted.ok and not parsed and trusted.shards_reparsed == 0
    assert trusted.units_found == trusted.units_planned > 0 and trusted.segments == sum(m.parts["segments"].rows for m in markers)
    full = verify(store, reparse=True)
    assert len(parsed) == 2 * len(markers) and full.shards_reparsed == len(markers)
    assert full.format() == trusted.format()


def test_the_writer_leaves_parts_it_finds_wrong_unchecked(tmp_path, caplog):
    """A part whose rows break the contract (here a segment twice) is written unchecked,
    with the problem logged, so verify parses and reports it."""
    import types

    from pipeline.commit import stage_parts
    from pipeline.schema import FileRow, SegmentRow

    store = OutputStore(str(tmp_path / "out"))
    units = pa.table({"unit_id": ["u1"], "uri": ["/a.wav"]})
    file_row = FileRow(unit_id="u1", uri="/a.wav", shard=0, status="ok", segments=2)
    segment = SegmentRow(unit_id="u1", uri="/a.wav", shard=0, segment=0, start=0.0, end=1.0, text=" hi")
    config = types.SimpleNamespace(fingerprint="f", lease_owner=None, model_name="tiny.en")
    good = stage_parts(0, units, [file_row], [segment, dataclasses.replace(segment, segment=1)], store, config,
                       1, 0.0, "node").marker
    assert all(p.checked for p in good.parts.values()) and not caplog.records
    bad = stage_parts(0, units, [file_row], [segment, segment], store, config, 1, 0.0, "node").marker
    assert not any(p.checked for p in bad.parts.values())
    assert "segment 0 of unit u1 appears 2 times" in caplog.text

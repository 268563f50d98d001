import os
import threading

import pyarrow as pa
import pytest

from pipeline import index, ledger, markers
from pipeline.index import all_markers, indexed_markers, reported_markers, unindex, update_index, write_index
from pipeline.ledger import append_plan, next_attempt, plan_parts, read_plan
from pipeline.markers import commit_marker, committed_shards, read_marker
from pipeline.publish import write_part
from pipeline.records import CommitMarker
from pipeline.store import OutputStore


def _marker(shard: int, node: str) -> CommitMarker:
    return CommitMarker(shard=shard, attempt=1, node=node, parts={}, units=0, statuses={}, audio_s=0.0, wall_s=0.0)


def test_parts_are_replaced_atomically_and_leave_no_temporary_files(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    info1 = write_part(store, "segments", 7, pa.table({"x": [1, 2]}))
    info2 = write_part(store, "segments", 7, pa.table({"x": [3]}))
    files = os.listdir(tmp_path / "out" / "segments")
    assert files == ["part-000007.parquet"]
    assert store.read_parquet(store.part_path("segments", 7)).column("x").to_pylist() == [3]
    assert info1.sha256 != info2.sha256 and info2.rows == 1


def test_commit_is_create_only_and_the_first_writer_wins(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    outcomes = []

    def commit(i):
        outcomes.append((i, commit_marker(store, 3, _marker(3, f"writer-{i}"))))

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, created in outcomes if created]
    assert len(winners) == 1
    assert read_marker(store, 3) == _marker(3, f"writer-{winners[0]}")
    assert committed_shards(store) == {3}
    assert os.listdir(tmp_path / "out" / "_commits") == ["000003.json"]


def test_plan_parts_append_in_order(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    assert read_plan(store) is None
    append_plan(store, pa.table({"shard": pa.array([0, 1], pa.int32())}))
    append_plan(store, pa.table({"shard": pa.array([2], pa.int32()), "extra": ["a"]}))
    plan = read_plan(store)
    assert plan.column("shard").to_pylist() == [0, 1, 2]
    assert plan.column("extra").to_pylist() == [None, None, "a"]


def test_attempts_count_up(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    assert [next_attempt(store, 5) for _ in range(3)] == [1, 2, 3]


def test_memory_store_round_trip():
    store = OutputStore("memory://bucket/out")
    write_part(store, "files", 0, pa.table({"x": [1]}))
    assert commit_marker(store, 0, _marker(0, "first")) is True
    assert commit_marker(store, 0, _marker(0, "second")) is False
    assert read_marker(store, 0).node == "first"
    assert committed_shards(store) == {0}
    assert store.uri("segments") == "memory:///bucket/out/segments"


def test_a_plan_part_is_created_only_once(tmp_path, monkeypatch):
    """Two drivers that listed the plan at the same moment pick the same part number:
    the second is refused instead of giving one shard number to different files."""
    import pytest

    from pipeline.store import PlanConflictError

    store = OutputStore(str(tmp_path / "out"))
    listed_before = plan_parts(store)
    append_plan(store, pa.table({"shard": pa.array([0], pa.int32()), "uri": ["a.wav"]}))
    monkeypatch.setattr(ledger, "plan_parts", lambda _store: listed_before)  # the other driver's stale listing
    with pytest.raises(PlanConflictError, match="written by another run"):
        append_plan(store, pa.table({"shard": pa.array([0], pa.int32()), "uri": ["b.wav"]}))
    monkeypatch.undo()
    assert read_plan(store).column("uri").to_pylist() == ["a.wav"]


def test_records_read_what_older_and_newer_versions_wrote(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    # An older marker lacks the optional fields; a newer one has a field this version does not know.
    store.write_json(store.marker_path(1), {"shard": 1, "attempt": 2, "node": "n", "units": 3, "audio_s": 4.0,
                                            "wall_s": 5.0, "statuses": {"ok": 3},
                                            "parts": {"files": {"rows": 3, "bytes": 10, "sha256": "ab"}},
                                            "from_the_future": True})
    marker = read_marker(store, 1)
    assert (marker.count("ok"), marker.count("failed"), marker.decode_warnings, marker.lease) == (3, 0, 0, None)
    assert marker.parts["files"].rows == 3
    assert CommitMarker.from_json(marker.to_json()) == marker


def test_reading_parquet_never_aborts_the_process_at_exit(tmp_path):
    """Arrow's reader threads may release the read buffer after the read returned; from
    Python bytes that takes the GIL, which aborts a process that is exiting (SIGABRT, a C++
    stack trace: about 1 exit in 7 here when the parts were read from the bytes directly)."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow.parquet as pq

    table = pa.table({"a": np.arange(200_000), "b": [f"s{i}" for i in range(200_000)]})
    pq.write_table(table, tmp_path / "part.parquet", row_group_size=20_000)
    code = (f"from pipeline.store import OutputStore\n"
            f"store = OutputStore({str(tmp_path)!r})\n"
            "tables = [store.read_parquet(store.path('part.parquet')) for _ in range(4)]\n")
    exits = [subprocess.run([sys.executable, "-c", code], capture_output=True).returncode for _ in range(24)]
    assert exits == [0] * 24


def test_markers_come_from_the_index_and_only_shards_it_lacks_are_read(tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path / "out"))
    for shard in range(5):
        commit_marker(store, shard, _marker(shard, "first"))
    update_index(store)
    unindex(store, [4])  # as retry-failed does before replacing its marker
    commit_marker(store, 5, _marker(5, "later"))  # committed after the index was written
    reads = []
    monkeypatch.setattr(markers, "read_marker", lambda store, shard: reads.append(shard) or read_marker(store, shard))
    assert [m.shard for m in all_markers(store)] == [0, 1, 2, 3, 4, 5]
    assert sorted(reads) == [4, 5]
    # The markers stay the truth: one deleted by hand uncommits its shard, index or not.
    os.unlink(store.marker_path(2))
    assert [m.shard for m in all_markers(store)] == [0, 1, 3, 4, 5]


def test_a_report_reads_the_index_and_only_the_markers_of_planned_shards_it_lacks(tmp_path, monkeypatch):
    from pipeline.report import summarize
    from pipeline.verify import verify

    store = OutputStore(str(tmp_path / "out"))
    append_plan(store, pa.table({"unit_id": [f"u{i}" for i in range(5)], "shard": pa.array(range(5), pa.int32())}))
    for shard in range(3):
        commit_marker(store, shard, _marker(shard, "first"))
    update_index(store)
    commit_marker(store, 3, _marker(3, "later"))  # committed after the index was written
    reads = []
    monkeypatch.setattr(markers, "read_marker", lambda store, shard: reads.append(shard) or read_marker(store, shard))
    assert [m.shard for m in reported_markers(store, range(5))] == [0, 1, 2, 3]
    assert reads == [3]
    summary = summarize(store)
    assert (summary.shards_planned, summary.shards_committed) == (5, 4)
    # A marker deleted by hand still counts for reports until a run writes the index
    # again; the markers themselves (what a run resumes from) and verify say otherwise.
    os.unlink(store.marker_path(1))
    assert [m.shard for m in reported_markers(store, range(5))] == [0, 1, 2, 3]
    assert [m.shard for m in all_markers(store)] == [0, 2, 3]
    assert any("shard 1: the marker index" in n and "its marker is gone" in n for n in verify(store).notes)
    update_index(store)
    assert [m.shard for m in reported_markers(store, range(5))] == [0, 2, 3]


def test_the_index_is_written_again_only_when_it_differs_from_the_markers(tmp_path, monkeypatch):
    store = OutputStore(str(tmp_path / "out"))
    for shard in range(3):
        commit_marker(store, shard, _marker(shard, "first"))
    writes = []
    monkeypatch.setattr(index, "write_index",
                        lambda store, found, *a, **k: writes.append(len(found)) or write_index(store, found, *a, **k))
    checks = []
    assert [m.shard for m in update_index(store, before_write=lambda: checks.append(1))] == [0, 1, 2]
    assert writes == [3] and checks == [1]
    update_index(store)  # a rerun that finds every marker indexed writes nothing
    assert writes == [3]
    commit_marker(store, 3, _marker(3, "later"))
    update_index(store)
    os.unlink(store.marker_path(0))  # a marker deleted by hand: its entry goes too
    update_index(store)
    assert writes == [3, 4, 3]
    assert sorted(indexed_markers(store)) == [1, 2, 3]
    unindex(store, [2, 7])
    assert sorted(indexed_markers(store)) == [1, 3]


def test_local_listings_match_the_pattern_and_fail_loudly(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    assert committed_shards(store) == set()  # no folder yet: nothing committed
    commits = tmp_path / "out" / "_commits"
    commits.mkdir(parents=True)
    for name in ("000001.json", "000002.json", ".000003.json.tmp", "000004.txt", "1000000.json"):
        (commits / name).write_text("{}")
    assert committed_shards(store) == {1, 2, 1000000}
    assert store.glob(store.path("_commits", "*.json")) == [str(commits / n) for n in ("000001.json", "000002.json", "1000000.json")]
    broken = OutputStore(str(tmp_path / "broken"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "_commits").write_text("")  # a folder that cannot be listed
    with pytest.raises(NotADirectoryError):
        committed_shards(broken)  # a listing that fails must not read as "nothing committed"

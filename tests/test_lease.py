import json
import socket
import threading
import time

import pytest

from pipeline import lease
from pipeline.lease import Lease, LeaseHeldError
from pipeline.ledger import append_plan, plan_parts
from pipeline.store import OutputStore


def _write(store, **fields):
    record = {"owner": "other", "purpose": "run", "host": "elsewhere", "pid": 1, "heartbeat_at": time.time()}
    record.update(fields)
    store.write_json(store.path("_lease.json"), record)


def test_a_live_lease_refuses_a_second_holder(tmp_path):
    store = OutputStore(str(tmp_path))
    with Lease(store):
        with pytest.raises(LeaseHeldError, match="in use by another bulkscribe run"):
            Lease(store).acquire()
    assert not (tmp_path / "_lease.json").exists()


def test_a_lease_on_another_host_counts_until_its_heartbeat_is_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "TTL_S", 0.5)
    store = OutputStore(str(tmp_path))
    _write(store, heartbeat_at=time.time() - 0.1)
    with pytest.raises(LeaseHeldError, match="last heartbeat 0s ago"):
        Lease(store).acquire()
    _write(store, heartbeat_at=time.time() - lease.TTL_S - 1)
    with Lease(store) as held:  # after watching it unchanged for TTL_S
        assert json.loads((tmp_path / "_lease.json").read_text())["owner"] == held.owner


def _beating(store, stop: threading.Event, **fields) -> threading.Thread:
    """A live holder elsewhere: its record changes every 0.05 s, whatever its clock says."""

    def beat():
        n = 0
        while not stop.wait(0.05):
            n += 1
            _write(store, beat=n, **fields)

    _write(store, beat=0, **fields)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return thread


def test_a_live_holder_whose_clock_is_behind_is_not_taken_over(tmp_path, monkeypatch):
    # Its heartbeat_at reads 1000 s old here: a taker ahead of it by that much.
    monkeypatch.setattr(lease, "TTL_S", 3.0)
    store = OutputStore(str(tmp_path))
    stop = threading.Event()
    holder = _beating(store, stop, heartbeat_at=time.time() - 1000)
    try:
        with pytest.raises(LeaseHeldError, match="in use by another bulkscribe run"):
            Lease(store).acquire()
    finally:
        stop.set()
        holder.join()
    assert json.loads((tmp_path / "_lease.json").read_text())["owner"] == "other"
    # Stopped (its record no longer changes), it is taken over after TTL_S of watching.
    with Lease(store) as held:
        assert json.loads((tmp_path / "_lease.json").read_text())["owner"] == held.owner


def test_a_holder_with_this_host_name_in_another_pid_namespace_is_not_taken_at_once(tmp_path, monkeypatch):
    # Host-network containers share a host name: the holder's pid means nothing here.
    monkeypatch.setattr(lease, "TTL_S", 3.0)
    store = OutputStore(str(tmp_path))
    stop = threading.Event()
    holder = _beating(store, stop, host=socket.gethostname(), pid=2**22 + 12345,
                      processes="another-boot pid:[4026531836]", heartbeat_at=time.time())
    try:
        assert lease.stale_reason(json.loads((tmp_path / "_lease.json").read_text())) is None
        with pytest.raises(LeaseHeldError):
            Lease(store).acquire()
    finally:
        stop.set()
        holder.join()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
    store = OutputStore(str(tmp_path))
    _write(store, host=socket.gethostname(), pid=2**22 + 12345, processes=lease.process_namespace())  # no such pid
    assert lease.stale_reason(store.read_json(store.path("_lease.json"))).endswith("is gone")
    with Lease(store):
        pass


def test_the_heartbeat_moves(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    store = OutputStore(str(tmp_path))
    beats = []
    beat = threading.Event()
    replace_if = store.replace_if

    def recording_write(path, data, expected):
        version = replace_if(path, data, expected)
        beats.append(json.loads(data)["heartbeat_at"])
        if len(beats) >= 2:
            beat.set()
        return version

    monkeypatch.setattr(store, "replace_if", recording_write)
    with Lease(store):
        assert beat.wait(60), "no heartbeat was written"
        on_disk = json.loads((tmp_path / "_lease.json").read_text())["heartbeat_at"]
    assert beats[1] > beats[0]
    assert on_disk >= beats[1]


def test_a_lease_taken_over_stops_its_holder_and_its_actors(tmp_path):
    from pipeline.lease import Lease, LeaseLostError, holds

    store = OutputStore(str(tmp_path / "out"))
    first = Lease(store)
    first.acquire()
    try:
        first.check()
        assert holds(store, first.owner)
        # Another run takes the folder over (as after first's heartbeat went stale).
        store.delete(first.path)
        second = Lease(store)
        second.acquire()
        assert not holds(store, first.owner) and holds(store, second.owner)
        with pytest.raises(LeaseLostError, match="taken over by another bulkscribe run"):
            first.check()
        assert first.lost
        second.release()
    finally:
        first.release()


class _AnswerLost(Exception):
    pass


def lost_answers_store(monkeypatch, tmp_name: str) -> OutputStore:
    """An object store (fsspec's memory one: create-only PUTs) whose first PUT of each
    path lands and then loses its answer: a timeout after the store acted, as on a flaky
    network. Our retries see it as a timeout and send the PUT again."""
    from pipeline import retry

    store = OutputStore(f"memory://{tmp_name}")
    real = store.fs.pipe_file
    answered: set[str] = set()

    def pipe_file(path, value, mode="overwrite", **kwargs):
        real(path, value, mode=mode, **kwargs)
        if path not in answered:
            answered.add(path)
            raise TimeoutError("read timed out (the PUT landed)")

    monkeypatch.setattr(store.fs, "pipe_file", pipe_file)
    monkeypatch.setattr(retry, "BASE_DELAY_S", 0.001)
    return store


def test_a_create_whose_answer_was_lost_is_still_this_writers(monkeypatch, tmp_path):
    import pyarrow as pa

    store = lost_answers_store(monkeypatch, tmp_path.name)
    assert store.create_only(store.path("_commits", "000001.json"), b'{"attempt": 1}') is True
    assert store.create_only(store.path("_commits", "000001.json"), b'{"attempt": 2}') is False  # another's
    with Lease(store) as held:  # not "in use by another bulkscribe run" naming itself
        assert json.loads(store.read_bytes(store.path("_lease.json")))["owner"] == held.owner
        append_plan(store, pa.table({"shard": [0]}))  # no PlanConflictError
    assert plan_parts(store) == [store.path("_plan", "part-000000.parquet")]


def test_temporary_files_of_interrupted_writes_are_removed_by_the_next_holder(tmp_path):
    store = OutputStore(str(tmp_path))
    left = [tmp_path / "segments" / ".part-000001.parquet.0f3a.tmp", tmp_path / "_commits" / ".000001.json.77.tmp",
            tmp_path / ".job.json.1.tmp"]
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a write")
    kept = tmp_path / "segments" / "part-000001.parquet"
    kept.write_bytes(b"a part")
    with Lease(store):
        pass
    assert not any(p.exists() for p in left) and kept.read_bytes() == b"a part"

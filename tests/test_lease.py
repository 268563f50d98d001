import json
import socket
import threading
import time

import pytest

from pipeline import lease
from pipeline.lease import Lease, LeaseHeldError
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


def test_a_lease_on_another_host_counts_until_its_heartbeat_is_stale(tmp_path):
    store = OutputStore(str(tmp_path))
    _write(store, heartbeat_at=time.time() - 5)
    with pytest.raises(LeaseHeldError, match="last heartbeat 5s ago"):
        Lease(store).acquire()
    _write(store, heartbeat_at=time.time() - lease.TTL_S - 1)
    with Lease(store) as held:
        assert json.loads((tmp_path / "_lease.json").read_text())["owner"] == held.owner


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
    store = OutputStore(str(tmp_path))
    _write(store, host=socket.gethostname(), pid=2**22 + 12345)  # no such pid
    assert lease.stale_reason(store.read_json(store.path("_lease.json"))).endswith("is gone")
    with Lease(store):
        pass


def test_the_heartbeat_moves(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    store = OutputStore(str(tmp_path))
    beats = []
    beat = threading.Event()
    write_json = store.write_json

    def recording_write(path, record):
        write_json(path, record)
        beats.append(record["heartbeat_at"])
        if len(beats) >= 2:
            beat.set()

    monkeypatch.setattr(store, "write_json", recording_write)
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

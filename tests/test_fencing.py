"""Fencing: a writer that stalled past a takeover cannot change what readers or later runs
see, whenever its write lands. Each test holds a real write in flight (the call has
started, as a PUT held by a network partition), lets another run take the folder over
and do its work, then lets the held write land; on S3 too (moto's server)."""

from __future__ import annotations

import shutil
import threading
from collections import Counter

import pyarrow as pa
import pytest

from pipeline import commit, inputs, job, lease, plan
from pipeline.actor import process_shard
from pipeline.config import WhisperOptions, WorkerConfig
from pipeline.lease import Lease, LeaseHeldError, read_lease
from pipeline.query import open_output
from pipeline.records import CommitMarker, JobRecord
from pipeline.store import OutputStore, PlanConflictError, UnsafeStoreError, json_bytes
from pipeline.verify import verify
from tests.helpers import moto_server
from pipeline.index import all_markers, index_path, indexed_markers, reported_markers, unindex, update_index, write_index
from pipeline.ledger import append_plan, create_job, plan_parts, read_job, read_plan
from pipeline.markers import commit_marker, read_marker
from pipeline.publish import publish_pending, staged

CLIP = "misc/LDC93S1.wav"


class Held:
    """The first call of `store.<method>` whose path `matches` is held once it has started
    (`reached`), and goes through when `release` is set: a request in flight."""

    def __init__(self, monkeypatch, store: OutputStore, method: str, matches):
        self.reached, self.release = threading.Event(), threading.Event()
        real = getattr(store, method)

        def held(path, *args, **kwargs):
            if matches(path) and not self.reached.is_set():
                self.reached.set()
                assert self.release.wait(300), "never released"
            return real(path, *args, **kwargs)

        monkeypatch.setattr(store, method, held)


class Background(threading.Thread):
    """A call on a thread of its own; `join()` returns its result or raises its error."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the test by join()
            self.error = exc

    def join(self, timeout=300):
        super().join(timeout)
        assert not self.is_alive(), "still running"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as endpoint:
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("fence")
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    """An output folder: a local one, or one on a real S3 API (moto)."""
    if request.param == "local":
        return str(tmp_path / "out"), {}
    return f"s3://fence/{tmp_path.name}", {"endpoint_url": request.getfixturevalue("s3_endpoint")}


def _job(folder, units) -> OutputStore:
    """A job's folder with `units` planned, as `bulkscribe run` leaves it before its shards."""
    store = _store(folder)
    create_job(store, JobRecord(output=folder[0], created_at="", spec={}, fingerprint="f" * 16,
                               fingerprint_fields={}, model={}, shard_audio_s=1e9))
    append_plan(store, units)
    return store


def _with_a_late_file(tmp_path, speech_dir):
    """Two files planned as shard 0; the second is away during the first attempt (it
    fails, not found) and back for `retry-failed`, which then gives the shard new rows."""
    audio = tmp_path / "audio"
    audio.mkdir()
    good, late = audio / "a.wav", audio / "b.flac"
    shutil.copy(speech_dir / CLIP, good)
    shutil.copy(speech_dir / "misc" / "jfk.flac", late)
    units = _units([good, late])
    late.rename(tmp_path / "away.flac")
    return units, lambda: (tmp_path / "away.flac").rename(late)


def _store(folder) -> OutputStore:
    url, options = folder
    return OutputStore(url, options)


def _config(folder, tiny_model, owner: str | None) -> WorkerConfig:
    url, options = folder
    return WorkerConfig(output=url, whisper=WhisperOptions(beam_size=1), threads=2, model_name="tiny.en",
                        model_sha256=tiny_model.sha256, fingerprint="f" * 16, storage_options=options,
                        lease_owner=owner)


def _units(paths, shard=0):
    return plan.assign_shards(inputs.expand([str(p) for p in paths]), shard, shard_audio_s=1e9)


def _take_over(store: OutputStore, frozen: Lease | None, monkeypatch) -> Lease:
    """`frozen`'s driver stops beating (frozen, or cut off), if it is still beating, and
    another run takes the folder over once the record stays unchanged for the lease's
    time to live."""
    if frozen is not None:
        frozen._stop.set()
        frozen._thread.join()
    monkeypatch.setattr(lease, "TTL_S", 0.3)
    taker = Lease(store)
    for _ in range(100):  # the frozen record must first look older than TTL_S
        try:
            taker.acquire()
            return taker
        except LeaseHeldError:
            threading.Event().wait(0.1)
    raise AssertionError("the lease was never taken over")


def _published_matches_marker(store: OutputStore, shard: int) -> bool:
    import hashlib

    marker = read_marker(store, shard)
    return all(hashlib.sha256(store.read_bytes(store.part_path(t, shard))).hexdigest() == marker.parts[t].sha256
               for t in ("segments", "files"))


# -- 1: a stale actor's parts ----------------------------------------------------------


@pytest.mark.parametrize("held_write", ["parts", "publication"])
def test_a_stale_actors_late_write_never_replaces_a_committed_shard(folder, monkeypatch, tmp_path, speech_dir,
                                                                   transcriber, tiny_model, held_write):
    units, come_back = _with_a_late_file(tmp_path, speech_dir)
    store = _job(folder, units)
    stale_store = _store(folder)
    stale_lease = Lease(stale_store)
    stale_lease.acquire()
    if held_write == "parts":  # its parts' PUT, after its lease check passed
        held = Held(monkeypatch, stale_store, "write_bytes", lambda p: "/_staged/" in p or "/segments/" in p)
    else:  # it committed, and its publication stalls
        held = Held(monkeypatch, stale_store, "replace_if", lambda p: "/segments/" in p)
    stale = Background(lambda: process_shard(0, units, transcriber, stale_store,
                                             _config(folder, tiny_model, stale_lease.owner), node="stale"))
    assert held.reached.wait(300)
    taker = _take_over(store, stale_lease, monkeypatch)
    try:
        # The new run commits the shard (or, finding it committed, publishes what its
        # marker names, as a run's start does), then retries its failed file: a newer
        # marker and newer parts, which the stale write must not replace.
        config = _config(folder, tiny_model, taker.owner)
        first = process_shard(0, units, transcriber, store, config, node="new")
        assert first.skipped is (held_write == "publication")
        publish_pending(store)
        come_back()
        retried = process_shard(0, units, transcriber, store, config, node="new", retry_failed=True)
        assert retried.committed and retried.ok == 2
        marker = read_marker(store, 0)
        held.release.set()
        assert stale.join().committed is (held_write == "publication")
        assert read_marker(store, 0) == marker  # the late write changed nothing a reader sees
        assert _published_matches_marker(store, 0)
        assert open_output(*folder).sql("select count(*) from files where status = 'ok'").fetchall()[0] == (2,)
        assert verify(store).ok, verify(store).format()
        assert not staged(store)
    finally:
        held.release.set()
        taker.release()


# -- 2: a stale driver's plan part -----------------------------------------------------


class _HeldCheck:
    """A lease whose holder stalls in its last check before writing (a frozen driver)."""

    def __init__(self):
        self.reached, self.release = threading.Event(), threading.Event()

    def check(self):
        self.reached.set()
        assert self.release.wait(300)


class _Holding:
    def check(self):
        pass


def test_a_stale_driver_never_gives_a_shard_number_to_other_files(folder, tmp_path, speech_dir):
    clips = sorted((speech_dir / "librispeech").iterdir())[:3]
    audio = tmp_path / "audio"
    audio.mkdir()
    for clip in clips:
        shutil.copy(clip, audio / clip.name)
    first, stale_new, fresh_new = (audio / c.name for c in clips)
    store = _store(folder)
    append_plan(store, _units([first]))
    stalled = _HeldCheck()
    stale = Background(lambda: job._extend_plan(_store(folder), inputs.expand([str(first), str(stale_new)]),
                                                1e9, None, stalled, None))
    assert stalled.reached.wait(300)  # it numbered its new shard from the plan it read
    job._extend_plan(store, inputs.expand([str(first), str(fresh_new)]), 1e9, None, _Holding(), None)
    stalled.release.set()
    with pytest.raises(PlanConflictError):
        stale.join()
    planned = read_plan(store).to_pylist()
    shards = Counter(row["shard"] for row in planned)
    assert sorted(shards.values()) == [1, 1], planned  # one file per shard number
    assert {row["uri"].rsplit("/", 1)[1] for row in planned} == {first.name, fresh_new.name}


# -- 3: readers while a shard is retried -----------------------------------------------


def _views_agree_with_a_marker(url: str, options: dict) -> None:
    """Every unit's segments in the views are those its `files` row counts."""
    out = open_output(url, options)
    files = out.files.to_table(columns=["unit_id", "status", "segments"]).to_pylist()
    segments = Counter(out.segments.to_table(columns=["unit_id"]).column("unit_id").to_pylist())
    for row in files:
        assert segments.get(row["unit_id"], 0) == (row["segments"] or 0), (row, segments)


def test_readers_see_one_marker_s_rows_at_every_step_of_a_retry(folder, monkeypatch, tmp_path, speech_dir,
                                                               transcriber, tiny_model):
    url, options = folder
    units, come_back = _with_a_late_file(tmp_path, speech_dir)
    store = _job(folder, units)
    first = process_shard(0, units, transcriber, store, _config(folder, tiny_model, None), node="n")
    assert (first.ok, first.failed) == (1, 1)
    come_back()
    _views_agree_with_a_marker(url, options)

    # A reader between any two writes of the retry, and after a crash at any of them.
    steps = []
    for method in ("write_bytes", "replace_if", "delete", "create_only"):
        real = getattr(store, method)

        def reading(path, *args, _real=real, **kwargs):
            done = _real(path, *args, **kwargs)
            _views_agree_with_a_marker(url, options)
            steps.append(path.rsplit("/", 2)[-2])
            return done

        monkeypatch.setattr(store, method, reading)
    retried = process_shard(0, units, transcriber, store, _config(folder, tiny_model, None), node="n",
                            retry_failed=True)
    assert retried.ok == 2 and "_commits" in steps
    assert _published_matches_marker(store, 0) and verify(store).ok


def test_a_retry_cut_short_after_its_marker_is_read_from_its_staged_parts_then_published(
        folder, monkeypatch, tmp_path, speech_dir, transcriber, tiny_model):
    url, options = folder
    units, come_back = _with_a_late_file(tmp_path, speech_dir)
    store = _job(folder, units)
    process_shard(0, units, transcriber, store, _config(folder, tiny_model, None), node="n")
    come_back()

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(commit, "publish", crash)  # the actor dies between marker and parts
    with pytest.raises(Crash):
        process_shard(0, units, transcriber, store, _config(folder, tiny_model, None), node="n", retry_failed=True)
    monkeypatch.undo()
    reader = _store(folder)
    assert read_marker(reader, 0).count("failed") == 0 and not _published_matches_marker(reader, 0)
    _views_agree_with_a_marker(url, options)
    assert open_output(url, options).sql("select count(*) from files where status = 'ok'").fetchall()[0] == (2,)
    assert any("still staged" in p for p in verify(reader).problems)
    assert publish_pending(reader) == (1, 0)  # what the next run does first
    assert _published_matches_marker(reader, 0) and verify(reader).ok and not staged(reader)


def test_an_actor_killed_between_marker_and_parts_has_them_published_by_the_next_attempt(
        folder, monkeypatch, tmp_path, speech_dir, transcriber, tiny_model):
    """The shard goes back to the queue; its next attempt finds the marker (seen in the
    chaos run: 5 shards of 748 left staged when nothing published them)."""
    units = _units([speech_dir / CLIP])
    store = _job(folder, units)

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(commit, "publish", killed)
    with pytest.raises(Killed):
        process_shard(0, units, transcriber, store, _config(folder, tiny_model, None), node="n")
    monkeypatch.undo()
    again = process_shard(0, units, transcriber, _store(folder), _config(folder, tiny_model, None), node="n")
    assert again.skipped and _published_matches_marker(store, 0) and not staged(store)
    assert verify(store).ok, verify(store).format()


# -- 4: the lease's own writes ---------------------------------------------------------


def test_a_heartbeat_that_lands_after_a_takeover_is_refused(folder, monkeypatch):
    store, taker_store = _store(folder), _store(folder)
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    holder = Lease(store)
    holder.acquire()
    held = Held(monkeypatch, store, "replace_if", lambda p: p.endswith("_lease.json"))
    assert held.reached.wait(60)  # a beat in flight
    taker = _take_over(taker_store, None, monkeypatch)
    assert read_lease(taker_store)["owner"] == taker.owner
    held.release.set()
    holder._thread.join(60)
    assert holder.lost and read_lease(taker_store)["owner"] == taker.owner  # the old holder did not come back
    holder.release()  # a release after the takeover leaves the new lease alone
    assert read_lease(taker_store)["owner"] == taker.owner
    taker.release()
    assert read_lease(taker_store) is None


def test_a_release_that_lands_after_a_takeover_leaves_the_new_lease(folder, monkeypatch):
    store, taker_store = _store(folder), _store(folder)
    holder = Lease(store)
    holder.acquire()
    holder._stop.set()
    holder._thread.join()
    held = Held(monkeypatch, store, "delete_if", lambda p: True)
    releasing = Background(holder.release)
    assert held.reached.wait(60)
    taker = _take_over(taker_store, None, monkeypatch)
    held.release.set()
    releasing.join()
    assert read_lease(taker_store)["owner"] == taker.owner
    taker.release()


def test_of_two_takers_of_one_stale_lease_one_wins(folder, monkeypatch):
    store = _store(folder)
    monkeypatch.setattr(lease, "TTL_S", 0.3)
    store.write_json(lease.lease_path(store), {"owner": "gone", "host": "elsewhere", "pid": 1, "heartbeat_at": 0})
    slow_store = _store(folder)
    held = Held(monkeypatch, slow_store, "replace_if", lambda p: p.endswith("_lease.json"))
    slow = Lease(slow_store)
    slow_taking = Background(slow.acquire)
    assert held.reached.wait(60)  # it decided to take over; its write is in flight
    fast = Lease(store)
    fast.acquire()
    held.release.set()
    with pytest.raises(LeaseHeldError, match="just taken"):
        slow_taking.join()
    assert read_lease(store)["owner"] == fast.owner
    fast.release()


# -- 5: the marker index ---------------------------------------------------------------


def _marker(shard: int, attempt: int) -> CommitMarker:
    return CommitMarker(shard=shard, attempt=attempt, node="n", parts={}, units=1, statuses={"ok": 1},
                        audio_s=1.0, wall_s=1.0)


def test_an_index_entry_that_differs_from_its_marker_is_repaired(folder):
    store = _store(folder)
    for shard in range(3):
        commit_marker(store, shard, _marker(shard, 1))
    update_index(store)
    stale_index = store.read_bytes(index_path(store))
    # retry-failed replaces shard 1's marker; a stale writer's index (read before) lands after.
    unindex(store, [1])
    store.write_json(store.marker_path(1), _marker(1, 2).to_json())
    update_index(store)
    store.write_bytes(index_path(store), stale_index)
    assert indexed_markers(store)[1].attempt == 1
    assert update_index(store)[1].attempt == 2
    assert indexed_markers(store)[1].attempt == 2 and reported_markers(store, range(3))[1].attempt == 2


def test_an_index_write_that_lands_after_another_is_refused(folder):
    store = _store(folder)
    for shard in range(2):
        commit_marker(store, shard, _marker(shard, 1))
    read_at = store.version(index_path(store))  # None: no index yet
    markers = all_markers(store)
    update_index(store)  # another run's write
    store.write_json(store.marker_path(1), _marker(1, 2).to_json())
    update_index(store)
    assert write_index(store, markers[:1], expected=read_at) is False
    assert [m.attempt for m in indexed_markers(store).values()] == [1, 2]


# -- the store's conditional writes ----------------------------------------------------


def test_a_store_that_ignores_conditional_writes_is_refused_before_a_run(s3_endpoint, tmp_path, monkeypatch):
    store = OutputStore(f"s3://fence/{tmp_path.name}", {"endpoint_url": s3_endpoint})
    store.check_conditional_writes()  # moto honours If-None-Match and If-Match
    real = store.fs.pipe_file

    def ignoring(path, data, mode="overwrite", IfNoneMatch=None, IfMatch=None, **kwargs):
        return real(path, data, **kwargs)

    monkeypatch.setattr(store.fs, "pipe_file", ignoring)
    with pytest.raises(UnsafeStoreError, match="ignores conditional writes"):
        store.check_conditional_writes()


def test_a_conditional_write_whose_answer_was_lost_is_still_this_writers(folder, monkeypatch):
    from pipeline import retry

    store = _store(folder)
    path = store.path("_commits", "000001.json")
    v1 = store.replace_if(path, json_bytes({"a": 1}), None)
    if store.conditional:
        real = store.fs.pipe_file
        lost = []

        def lands_then_times_out(p, data, **kwargs):
            out = real(p, data, **kwargs)
            if not lost:
                lost.append(p)
                raise TimeoutError("read timed out (the PUT landed)")
            return out

        monkeypatch.setattr(store.fs, "pipe_file", lands_then_times_out)
        monkeypatch.setattr(retry, "BASE_DELAY_S", 0.001)
    assert store.replace_if(path, json_bytes({"a": 2}), v1) is not None  # its retry meets its own write
    assert store.replace_if(path, json_bytes({"a": 3}), v1) is None  # a stale one does not
    assert store.read_json(path) == {"a": 2}


def test_a_conditional_request_conflict_is_retried():
    import errno

    from botocore.exceptions import ClientError

    from pipeline.retry import is_transient

    conflict = ClientError({"Error": {"Code": "ConditionalRequestConflict", "Message": "in flight"},
                            "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject")
    translated = OSError(errno.EIO, "conflict")  # what s3fs raises for it
    translated.__cause__ = conflict
    assert is_transient(translated)
    failed = ClientError({"Error": {"Code": "PreconditionFailed", "Message": "no"},
                          "ResponseMetadata": {"HTTPStatusCode": 412}}, "PutObject")
    refused = OSError(errno.EINVAL, "precondition")
    refused.__cause__ = failed
    assert not is_transient(refused)


def test_plan_parts_and_job_records_are_created_once(folder):
    store = _store(folder)
    parts = plan_parts(store)
    append_plan(store, pa.table({"shard": pa.array([0], pa.int32()), "uri": ["a.wav"]}), after=parts)
    with pytest.raises(PlanConflictError):  # another plan from the same parts
        append_plan(store, pa.table({"shard": pa.array([0], pa.int32()), "uri": ["b.wav"]}), after=parts)
    job = JobRecord(output=folder[0], created_at="1", spec={}, fingerprint="a", fingerprint_fields={}, model={},
                    shard_audio_s=60.0)
    create_job(store, job)
    with pytest.raises(PlanConflictError, match="another run made this folder a job"):
        create_job(store, JobRecord(**{**job.to_json(), "fingerprint": "b"}))
    assert read_job(store).fingerprint == "a"

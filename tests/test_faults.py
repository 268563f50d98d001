"""Faults during a run: each scenario ends with the same check (tests/checks.py).

The promise: at-least-once execution, exactly-once committed output, resumable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests import flaky_fs
from tests.checks import check_output

flaky_fs.register()  # the checks read flaky:// outputs from this process too

pytestmark = pytest.mark.slow

from tests.helpers import finish, markers_in, run_ok, start, wait_until
from pipeline.ledger import run_records
from pipeline.markers import read_marker
from pipeline.publish import staged


def shard_in_flight(out: Path) -> bool:
    """A shard has started (its attempt is counted) and is not committed yet."""
    started = {p.stem for p in (out / "_attempts").glob("*.json")} if (out / "_attempts").exists() else set()
    done = {p.stem for p in (out / "_commits").glob("*.json")} if (out / "_commits").exists() else set()
    return bool(started - done) and len(done) >= 1


def busy_actor_pids() -> list[int]:
    """Actors in the middle of a shard: Ray titles them `ray::ShardWorker.process`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                title = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ShardWorker.process" in title:
                pids.append(int(proc.name))
    return pids


def max_attempts(out: Path) -> int:
    return max(json.loads(p.read_text())["attempts"] for p in (out / "_attempts").glob("*.json"))


def test_actor_killed_mid_shard(corpus, reference, tmp_path):
    out = tmp_path / "out"
    # A shard takes well under a second of work here: pause each one so that the kill
    # lands inside a shard, not between two.
    process = start(corpus, out, env={"BULKSCRIBE_SHARD_PAUSE_S": "2"})
    wait_until(lambda: shard_in_flight(out) and busy_actor_pids(), what="an actor in the middle of a shard")
    # The actor of a shard in flight, by the pid its attempt recorded: an idle actor may
    # still carry the `.submit` title of its last call.
    started = {p.stem: json.loads(p.read_text()) for p in (out / "_attempts").glob("*.json")}
    in_flight = [a for name, a in started.items() if not (out / "_commits" / f"{name}.json").exists()]
    victim = in_flight[0]["pid"]
    assert victim in busy_actor_pids()
    os.kill(victim, signal.SIGKILL)
    code, _, stderr = finish(process)
    assert code == 0, stderr[-3000:]
    check_output(out, reference)
    assert max_attempts(out) >= 2  # the killed shard ran again and committed once


def test_driver_killed_during_planning(corpus, reference, tmp_path):
    out = tmp_path / "out"
    code, _, _ = finish(start(corpus, out, env={"BULKSCRIBE_CRASH_AT": "before_plan_write"}))
    assert code == -signal.SIGKILL
    assert (out / "job.json").exists() and not list((out / "_plan").glob("*.parquet") if (out / "_plan").exists() else [])
    run_ok(corpus, out)
    check_output(out, reference)


def test_driver_killed_between_parts_and_marker(corpus, reference, tmp_path):
    out = tmp_path / "out"
    code, _, _ = finish(start(corpus, out, env={"BULKSCRIBE_CRASH_AT": "after_parts_write"}))
    assert code == -signal.SIGKILL
    # Staged under the attempt's own names: nothing a glob of the tables shows.
    assert list((out / "_staged" / "segments").glob("*.parquet")) and markers_in(out) < 8
    assert len(list((out / "segments").glob("*.parquet"))) == markers_in(out)
    stdout = run_ok(corpus, out)
    assert "this run: " in stdout
    check_output(out, reference)


def test_driver_killed_between_marker_and_parts(corpus, reference, tmp_path):
    from pipeline.query import open_output
    from pipeline.store import OutputStore

    out = tmp_path / "out"
    code, _, _ = finish(start(corpus, out, env={"BULKSCRIBE_CRASH_AT": "after_marker"}))
    assert code == -signal.SIGKILL
    store = OutputStore(str(out))
    # (An actor of the killed driver may still be committing: compare like with like.)
    views = open_output(str(out))  # the staged parts their marker names, for those
    assert views.unpublished
    assert views.sql("select count(distinct unit_id) from files").fetchall()[0][0] == sum(
        read_marker(store, s).units for s in views.committed)
    stdout = run_ok(corpus, out)
    assert "this run: " in stdout and not staged(store)
    check_output(out, reference)


def test_driver_killed_mid_run_then_resumed(corpus, reference, tmp_path):
    out = tmp_path / "out"
    process = start(corpus, out)
    wait_until(lambda: markers_in(out) >= 2, what="two commits")
    process.kill()
    finish(process)
    committed = markers_in(out)
    assert 2 <= committed < 8
    stdout = run_ok(corpus, out)
    # An actor of the killed driver may still commit the shard it was finishing.
    skipped = int(re.search(r"(\d+) already committed", stdout).group(1))
    assert committed <= skipped < 8
    check_output(out, reference)
    # The real-time figure counts only what finished runs transcribed in their own time:
    # the killed run's shards are committed audio, but not audio of a recorded run.
    from pipeline.report import summarize
    from pipeline.store import OutputStore

    summary = summarize(OutputStore(str(out)))
    runs = run_records(OutputStore(str(out)))
    assert len(runs) == 1 and summary.run_audio_s == runs[0].audio_s < summary.audio_s
    assert summary.rtfx == runs[0].audio_s / runs[0].wall_s


def test_transient_storage_errors_are_retried(corpus, reference, tmp_path):
    out = tmp_path / "out"
    env = {"BULKSCRIBE_WORKER_SETUP": "tests.flaky_fs.register", "FLAKY_EVERY": "3"}
    code, stdout, stderr = finish(start(f"flaky://{corpus}", f"flaky://{out}", env=env))
    assert code == 0, stderr[-3000:]
    assert "retry 1/5" in stderr  # failures were injected, in the driver and in the actors
    check_output(f"flaky://{out}", reference)


def test_permanent_storage_error_is_a_failed_row_not_a_retry(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(corpus / "LDC93S1.wav", folder / "LDC93S1.wav")
    shutil.copy(corpus / "LDC93S1.wav", folder / "forbidden.wav")
    out = tmp_path / "out"
    env = {"BULKSCRIBE_WORKER_SETUP": "tests.flaky_fs.register", "FLAKY_EVERY": "0"}
    code, _, stderr = finish(start(f"flaky://{folder}", f"flaky://{out}", env=env))
    assert code == 3, stderr[-3000:]  # complete, with a failed file
    from tests.checks import statuses

    assert statuses(f"flaky://{out}") == [("LDC93S1.wav", "ok", None), ("forbidden.wav", "failed", "permission_denied")]
    assert "forbidden" not in "".join(line for line in stderr.splitlines() if "retry" in line)


def descendants(pid: int) -> list[str]:
    """The command lines of every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    lines, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        try:
            lines.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return lines


def test_second_run_into_a_live_folder_is_refused_and_ray_stays_private(corpus, tmp_path):
    out = tmp_path / "out"
    secret = "AKIAEXAMPLESECRET0042"
    first = start(corpus, out, "--storage-option", f"client_secret={secret}")
    wait_until(lambda: (out / "_lease.json").exists() and markers_in(out) >= 1, what="the first run at work")
    # The embedded Ray's dashboard process loads no module but usage stats: no web server,
    # no job API to submit code to. (Its processes are the run's own children; a port
    # check would see other Rays on the machine.)
    ray_processes = descendants(first.pid)
    dashboards = [line for line in ray_processes if "dashboard/dashboard.py" in line]
    assert any("raylet" in line for line in ray_processes) and dashboards, ray_processes
    assert all("--modules-to-load=UsageStatsHead " in line + " " for line in dashboards), dashboards
    code, _, stderr = finish(start(corpus, out))
    assert code == 2 and "is in use by another bulkscribe run" in stderr and "Traceback" not in stderr
    code, stdout, stderr = finish(first)
    assert code == 0, stderr[-3000:]
    assert "Token authentication" not in stderr  # on, and said explicitly: Ray has nothing to warn about
    assert "ray logs: /" in stdout  # where Ray's own output went
    assert not (out / "_lease.json").exists()
    # Storage options may hold credentials: they reach no file of the folder and no log line.
    assert secret not in stdout + stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_a_stalled_driver_whose_lease_is_taken_over_never_writes_again(corpus, reference, tmp_path):
    """Two drivers race on one folder: the first stalls (SIGSTOP, as a frozen VM or a
    partitioned driver) while its actors hold transcribed shards; the second takes the
    lease over and finishes the job; then the first's actors go on and its driver wakes.
    They must write nothing (else they would replace the second run's committed parts),
    and the first run stops with a message."""
    out = tmp_path / "out"
    ttl = {"BULKSCRIBE_LEASE_TTL_S": "4"}
    gate = tmp_path / "gate"
    first = start(corpus, out, env={**ttl, "BULKSCRIBE_GATE": f"before_parts_write={gate}"})
    wait_until(lambda: list(tmp_path.glob("gate.waiting-*")), what="an actor holding a transcribed shard")
    first.send_signal(signal.SIGSTOP)
    try:
        lease = out / "_lease.json"
        wait_until(lambda: time.time() - json.loads(lease.read_text())["heartbeat_at"] > 4.5, what="a stale lease")
        second_code, _, second_err = finish(start(corpus, out, env=ttl))
    finally:
        gate.touch()
        first.send_signal(signal.SIGCONT)
    assert second_code == 0, second_err[-3000:]
    assert "taking over the lease" in second_err
    code, _, stderr = finish(first)
    assert code == 1 and "was taken over by another bulkscribe run" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr
    check_output(out, reference)
    # Every commit was the second run's: the first never got past its gate.
    owners = {json.loads(p.read_text())["lease"] for p in (out / "_commits").glob("*.json")}
    assert len(owners) == 1 and None not in owners


@pytest.fixture
def cluster():
    """A head with no CPUs and three 1-CPU worker nodes, as separate processes here."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_host": "127.0.0.1"})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def run_with_node_fault(corpus: Path, out: Path, address: str, fault) -> None:
    """Run on the cluster, call `fault()` after the first commit, and expect success."""
    process = start(corpus, out, "--address", address)
    wait_until(lambda: markers_in(out) >= 1, what="a commit")
    fault()
    code, _, stderr = finish(process)
    assert code == 0, stderr[-3000:]


def test_node_lost_mid_run(corpus, reference, tmp_path, cluster):
    head, workers = cluster
    out = tmp_path / "out"
    run_with_node_fault(corpus, out, head.address, lambda: head.remove_node(workers[0], allow_graceful=False))
    check_output(out, reference)


def test_preemption_notice_drains_a_node(corpus, reference, tmp_path, cluster):
    head, workers = cluster
    out = tmp_path / "out"
    # SIGTERM to the node's raylet is what a spot VM's shutdown sends; Ray drains the node.
    raylet = workers[1].all_processes["raylet"][0].process
    run_with_node_fault(corpus, out, head.address, lambda: raylet.send_signal(signal.SIGTERM))
    check_output(out, reference)
    import duckdb

    assert duckdb.sql(f"select count(distinct node) from '{out}/files/*.parquet'").fetchall()[0][0] >= 2


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(corpus, reference, tmp_path):
    out = tmp_path / "out"
    # A run as started from a terminal. A suite started in the background of a shell has
    # SIGINT ignored, and its children keep it ignored (the run would go on after ctrl-c);
    # a signal with a handler here is back to its default in the child.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # Every shard pauses, so the interruption lands with shards in flight.
        first = start(corpus, out, env={"BULKSCRIBE_SHARD_PAUSE_S": "1"})
    finally:
        signal.signal(signal.SIGINT, before)
    wait_until(lambda: shard_in_flight(out), what="a shard in flight after a commit")
    first.send_signal(signal.SIGINT)
    code, stdout, stderr = finish(first)
    assert code == 130, stderr[-3000:]
    assert "interrupted" in stderr and "resume with: bulkscribe run" in stderr and "Traceback" not in stderr
    assert not (out / "_lease.json").exists()
    assert 1 <= markers_in(out) < 8
    run_ok(corpus, out)
    check_output(out, reference)


def test_actors_that_cannot_start_stop_the_run_with_a_clear_error(ray_cluster, tmp_path, tiny_model, monkeypatch):
    """Each actor dies as it loads its model (as when a driver and a cluster disagree on
    token authentication, and Ray takes the driver for dead): the run stops after a few,
    instead of starting actors forever."""
    from pipeline import dispatch
    from pipeline.config import PoolSize, WhisperOptions, WorkerConfig

    monkeypatch.setattr(dispatch, "MAX_LOAD_LOSSES", 3)
    config = WorkerConfig(output=str(tmp_path / "out"), whisper=WhisperOptions(), threads=1, model_name="tiny.en",
                          model_sha256=tiny_model.sha256, fingerprint="f" * 16)
    shards = dispatch.run_shards([0], lambda shard: b"", config, PoolSize(1, 1, 1),
                                 env=lambda threads: {"BULKSCRIBE_DIE_AT": "actor_load"})
    with pytest.raises(dispatch.ActorStartError, match="3 actors in a row were lost while loading their model"):
        list(shards)

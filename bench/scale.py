"""The driver at archive scale: planning, dispatch and the time to the first shard.

A synthetic archive of N tiny real WAV files (a 1 s cut of a bundled LibriSpeech clip,
hard-linked N times, 1,000 per folder) is planned and started by a real `bulkscribe
run` (embedded Ray, 10 files per shard), stopped with Ctrl-C once its first shard has
started. Printed per N: time to the first shard started (listing, planning, Ray start-up
and the first actor's model load included) and the driver's peak resident memory.

Then the dispatch overhead alone: shards that do nothing, handed to 2 actors by
`pipeline.dispatch` and by Ray Data (`from_items(...).map_batches(...)` with one block per
shard, as bulkscribe did before), side by side in one run.

Then `status` (`report.summarize`) on a finished folder of synthetic commit markers,
reading every marker and reading the marker index, with the storage requests of each;
with `--status-s3`, `bulkscribe status` of that folder uploaded to a moto S3 server, with
the HTTP requests the server answered.

Last, the read side of a finished folder of N shards with real parts (10 files of 3
segments per shard, written by the actors' own `commit.write_parts`, markers and index as
a run leaves them): `bulkscribe compact` (what the end of the run that wrote them does,
once), `status`, `verify` and `query "select count(*) from files"`, each a process of its
own, with its wall time and peak resident memory; with `--read-s3`, that folder on a moto
S3 server: `verify` (with and without `--reparse`), the query over the parts,
`bulkscribe compact` there, and the query over the compacted files, with the HTTP
requests of each.

With `--long`, planning N long local files into windows: durations read from the
headers against one ffmpeg probe per file, side by side; with `--long-s3`, N remote
files planned from their headers on a moto S3 server, with the requests it takes.

    python bench/scale.py [--files 10000,100000] [--shards 2000] [--status 10000,100000]
                          [--status-s3 10000] [--read 10000,100000] [--read-s3 10000]
                          [--long 2000] [--long-s3 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import wave
from pathlib import Path
from typing import Callable

import numpy as np
from pipeline.index import index_path, update_index
from pipeline.ledger import append_plan, read_job, write_job
from pipeline.markers import commit_marker

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work" / "scale"
CLIP = ROOT / "tests" / "data" / "speech" / "librispeech" / "1089-134686-0000.flac"


def build_archive(files: int) -> Path:
    """N hard links of a 1 s real WAV, 1,000 per folder (kept between runs)."""
    folder = WORK / f"archive-{files}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from pipeline import audio

    samples = audio.decode(str(CLIP)).samples[:16_000]
    source = folder / "source.wav"
    with wave.open(str(source), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    for i in range(files):
        sub = folder / "audio" / f"{i // 1000:04d}"
        if i % 1000 == 0:
            # A copy per folder: a file takes at most 65,000 hard links.
            sub.mkdir(parents=True)
            local = folder / "sources" / f"{i // 1000:04d}.wav"
            local.parent.mkdir(exist_ok=True)
            shutil.copy(source, local)
        os.link(local, sub / f"{i:07d}.wav")
    (folder / "done").touch()
    return folder


def time_to_first_shard(files: int) -> tuple[float, float]:
    """(seconds until the first shard started, the driver's peak RSS in MB)."""
    archive = build_archive(files)
    out = WORK / f"out-{files}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    # 10 files of 1 s per shard: files / 10 shards.
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(archive / "audio"), "--output", str(out),
         "--shard-minutes", str(10 / 60), "--beam-size", "1", "--no-progress"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    peak = 0.0
    while not (out / "_attempts").exists() or not any((out / "_attempts").iterdir()):
        if run.poll() is not None:
            raise RuntimeError(f"the run ended before its first shard: {run.stderr.read()[-2000:]}")
        peak = max(peak, _hwm_mb(run.pid))
        time.sleep(0.05)
    first = time.monotonic() - started
    peak = max(peak, _hwm_mb(run.pid))
    run.send_signal(signal.SIGINT)
    run.communicate(timeout=300)
    return first, peak


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _Nothing:
    """An actor whose shards cost nothing: what is left is the dispatch."""

    def __init__(self, *_):
        pass

    def load(self) -> str:
        return "here"

    def process(self, shard: int, units: bytes, mode: str) -> int:
        return shard

    def __call__(self, batch):
        return batch


def dispatch_overhead(shards: int) -> dict[str, float]:
    import ray
    import ray.data

    from pipeline import dispatch
    from pipeline.config import PoolSize

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    seconds = {}
    try:
        original = dispatch.ShardWorker
        dispatch.ShardWorker = _Nothing
        try:
            t0 = time.perf_counter()
            config = types.SimpleNamespace(threads=1)  # all run_shards reads of it here
            done = sum(1 for _ in dispatch.run_shards(list(range(shards)), lambda s: b"x" * 1000, config,
                                                      PoolSize(2, 2, 2), env=lambda threads: {}))
            seconds["pipeline.dispatch (Ray core actors)"] = time.perf_counter() - t0
            assert done == shards
        finally:
            dispatch.ShardWorker = original
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        t0 = time.perf_counter()
        items = [{"shard": s, "units": b"x" * 1000} for s in range(shards)]
        dataset = ray.data.from_items(items, override_num_blocks=shards).map_batches(
            _Nothing, batch_size=1, batch_format="pyarrow", num_cpus=1,
            compute=ray.data.ActorPoolStrategy(min_size=2, max_size=2, max_tasks_in_flight_per_actor=1))
        done = sum(1 for _ in dataset.iter_rows())
        seconds["Ray Data from_items + map_batches"] = time.perf_counter() - t0
        assert done == shards
    finally:
        ray.shutdown()
    return seconds


def status_reads(shards: int) -> None:
    """`bulkscribe status` on a finished folder of `shards` synthetic markers: time and
    storage requests (reads and listings, what an object store bills), without the
    marker index and with it."""
    import pyarrow as pa

    from pipeline.records import CommitMarker, JobRecord, Part
    from pipeline.report import summarize
    from pipeline.store import OutputStore

    folder = WORK / f"status-{shards}"
    store = OutputStore(str(folder))
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        write_job(store, JobRecord(output=str(folder), created_at="", spec={}, fingerprint="f", fingerprint_fields={},
                                  model={}, shard_audio_s=60.0))
        part = Part(rows=10, bytes=1000, sha256="0" * 64)
        for shard in range(shards):
            commit_marker(store, shard, CommitMarker(shard=shard, attempt=1, node="n", parts={"segments": part, "files": part},
                                             units=10, statuses={"ok": 10}, audio_s=600.0, wall_s=30.0))
        append_plan(store, pa.table({"shard": pa.array(np.repeat(np.arange(shards), 10), pa.int32()),
                                    "unit_id": [f"u{i}" for i in range(shards * 10)]}))
        (folder / "done").write_text("")
    store.delete(index_path(store))
    print(f"status on {shards:,} committed shards (local disk; the requests carry over to S3, where a "
          f"listing costs one request per 1,000 keys)")
    for side in ("markers one by one", "marker index"):
        if side == "marker index":
            update_index(store)
        counted = OutputStore(str(folder))
        calls = {"reads": 0, "listings": 0}
        read_bytes, glob = counted.read_bytes, counted.glob

        def counting_read(path, _read=read_bytes):
            calls["reads"] += 1
            return _read(path)

        def counting_glob(pattern, _glob=glob):
            calls["listings"] += 1
            return _glob(pattern)

        counted.read_bytes, counted.glob = counting_read, counting_glob
        started = time.perf_counter()
        summary = summarize(counted)
        wall = time.perf_counter() - started
        assert summary.shards_committed == shards
        print(f"  {side:<22} {wall:6.1f} s  {calls['reads']:>7,} reads  {calls['listings']:>3} listings")


@contextlib.contextmanager
def moto_s3(folder: Path, bucket: str, skip: Callable[[Path], bool] = lambda p: False):
    """A moto S3 server on loopback holding `folder`'s files under s3://`bucket`/ (less
    those `skip` names); yields (endpoint, the server's request log, the environment)."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = WORK / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    with open(log, "w") as requests:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=requests, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        started = time.perf_counter()
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not skip(p.relative_to(folder))]
        with ThreadPoolExecutor(8) as pool:  # moto takes about 130 PUTs a second this way
            list(pool.map(lambda p: client.put_object(Bucket=bucket, Key=str(p.relative_to(folder)),
                                                      Body=p.read_bytes()), files))
        print(f"  ({len(files):,} objects uploaded to a moto S3 server in {time.perf_counter() - started:.0f} s)")
        yield endpoint, log, env
    finally:
        server.terminate()
        server.wait()


def status_s3(shards: int) -> None:
    """`bulkscribe status` of the folder of `status_reads` on a moto S3 server on loopback:
    wall time (one process) and the HTTP requests the server answered, counted from its
    request log."""
    from pipeline.store import OutputStore

    folder = WORK / f"status-{shards}"
    if not (folder / "done").exists():
        status_reads(shards)
    update_index(OutputStore(str(folder)))
    print(f"status on {shards:,} committed shards on a moto S3 server")
    with moto_s3(folder, "status") as (endpoint, log, env):
        before = _requests(log)
        wall, peak_mb, output = _measured([sys.executable, "-m", "pipeline.cli", "status", "s3://status",
                                           "--storage-option", f"endpoint_url={endpoint}"], env=env)
        if "(complete)" not in output:
            raise RuntimeError(f"status did not finish: {output[-2000:]}")
        print(f"  status (marker index)  {wall:6.1f} s  {_requests(log) - before:>5,} requests  peak RSS {peak_mb:.0f} MB")


def read_s3(shards: int) -> None:
    """A finished folder of `shards` shards on a moto S3 server: `verify` (ETags) and
    `verify --reparse` (every object read), `query "select count(*) from files"` over the
    parts, `bulkscribe compact` there and the same query over the compacted files: wall
    time and HTTP requests of each."""
    _, folder = finished_folder(shards)
    print(f"a finished folder of {shards:,} shards on a moto S3 server")
    compacted = lambda p: p.parts[0] == "_index" and p.name != "markers.parquet"  # noqa: E731
    with moto_s3(folder, "finished", skip=compacted) as (endpoint, log, env):
        where = ["s3://finished", "--storage-option", f"endpoint_url={endpoint}"]
        count = "select count(*) from files"
        for name, args, expect in (
            ("verify (listings: ETags)", ["verify", where[0]], "OK:"),
            ("verify --reparse (every object read)", ["verify", where[0], "--reparse"], "OK:"),
            (f'query "{count}" (parts)', ["query", where[0], count], f"{shards * UNITS_PER_SHARD}"),
            ("compact", ["compact", where[0]], f"{shards} shard(s) copied"),
            (f'query "{count}" (compacted)', ["query", where[0], count], f"{shards * UNITS_PER_SHARD}"),
        ):
            before = _requests(log)
            wall, peak_mb, output = _measured([sys.executable, "-m", "pipeline.cli", *args, *where[1:]], env=env)
            if expect not in output:
                raise RuntimeError(f"{name} did not say {expect!r}: {output[-2000:]}")
            print(f"  {name:<48} {wall:6.1f} s  {_requests(log) - before:>7,} requests  peak RSS {peak_mb:6.0f} MB")


def _requests(log: Path) -> int:
    """HTTP requests in moto's log so far (one line each: `"GET /bench?list-type=2 ..." 200`,
    the request in colour for some statuses, such as 206 and 404)."""
    return len(re.findall(r'HTTP/1\.[01](?:\x1b\[[0-9;]*m)?" [2-5]\d\d ', log.read_text(errors="replace")))


UNITS_PER_SHARD = 10
SEGMENTS_PER_UNIT = 3


def finished_folder(shards: int) -> tuple[Path, Path]:
    """(archive, output folder): the synthetic archive of `shards` x 10 files and a finished
    job of it, as a run with the default options leaves it (kept between runs)."""
    archive = build_archive(shards * UNITS_PER_SHARD)
    folder = WORK / f"finished-{shards}"
    if (folder / "done").exists():
        return archive, folder
    import multiprocessing

    import pyarrow as pa

    from pipeline import inputs, models
    from pipeline.config import WhisperOptions, fingerprint, fingerprint_fields
    from pipeline.records import JobRecord
    from pipeline.store import OutputStore

    shutil.rmtree(folder, ignore_errors=True)
    store = OutputStore(str(folder))
    fields = fingerprint_fields(WhisperOptions(), models.resolve(WhisperOptions().model).sha256)
    write_job(store, JobRecord(output=str(folder), created_at="", spec={"inputs": [str(archive / "audio")]},
                              fingerprint=fingerprint(fields), fingerprint_fields=fields, model={},
                              shard_audio_s=UNITS_PER_SHARD, window_s=600.0))
    step = 1000
    with multiprocessing.get_context("spawn").Pool(len(os.sched_getaffinity(0))) as pool:
        for _ in pool.imap_unordered(_write_shards, [(str(archive), str(folder), a, min(a + step, shards))
                                                     for a in range(0, shards, step)]):
            pass
    uris = [_uri(archive, i) for i in range(shards * UNITS_PER_SHARD)]
    append_plan(store, pa.table({
        "shard": pa.array(np.arange(len(uris)) // UNITS_PER_SHARD, pa.int32()),
        "est_audio_s": np.full(len(uris), 1.0),
        "unit_id": [inputs.unit_id(u) for u in uris],
        "uri": uris,
        "size_bytes": pa.array(np.full(len(uris), (archive / "source.wav").stat().st_size), pa.int64()),
        "start_s": np.zeros(len(uris)),
        "end_s": pa.nulls(len(uris), pa.float64()),
        "split": pa.array(np.zeros(len(uris), bool)),
    }))
    update_index(store)
    (folder / "done").write_text("")
    return archive, folder


def _uri(archive: Path, i: int) -> str:
    return str(archive / "audio" / f"{i // 1000:04d}" / f"{i:07d}.wav")


def _write_shards(job: tuple[str, str, int, int]) -> None:
    import pyarrow as pa

    from pipeline import inputs
    from pipeline.commit import write_parts
    from pipeline.schema import FileRow, SegmentRow
    from pipeline.store import OutputStore

    archive, folder, first, end = job
    store = OutputStore(folder)
    config = types.SimpleNamespace(fingerprint=read_job(store).fingerprint, lease_owner=None)  # all write_parts reads
    text = " He hoped there would be stew for dinner, turnips and carrots and bruised potatoes."
    for shard in range(first, end):
        files, segments = [], []
        for i in range(shard * UNITS_PER_SHARD, (shard + 1) * UNITS_PER_SHARD):
            uri = _uri(Path(archive), i)
            uid = inputs.unit_id(uri)
            files.append(FileRow(unit_id=uid, uri=uri, shard=shard, status="ok", attempts=1, size_bytes=32_044,
                                 duration_s=1.0, language="en", segments=SEGMENTS_PER_UNIT, decode_s=0.01,
                                 transcribe_s=0.1, rtfx=10.0, node="bench/node", model="tiny.en"))
            segments += [SegmentRow(unit_id=uid, uri=uri, shard=shard, segment=k, start=0.3 * k, end=0.3 * k + 0.3,
                                    text=text, avg_logprob=-0.2, no_speech_prob=0.01, compression_ratio=1.3,
                                    temperature=0.0, language="en") for k in range(SEGMENTS_PER_UNIT)]
        units = pa.table({"shard": pa.array([shard] * UNITS_PER_SHARD, pa.int32()),
                          "unit_id": [f.unit_id for f in files], "uri": [f.uri for f in files]})
        commit_marker(store, shard, write_parts(shard, units, files, segments, store, config, 1, time.time(), "bench/node"))


def read_side(shards: int) -> None:
    """Reruns with nothing to do (by the saved plan, and listing the archive again),
    `status`, `verify` and a `query` of a finished folder."""
    started = time.perf_counter()
    archive, folder = finished_folder(shards)
    built = time.perf_counter() - started
    print(f"a finished folder of {shards:,} shards ({shards * UNITS_PER_SHARD:,} files, "
          f"{shards * UNITS_PER_SHARD * SEGMENTS_PER_UNIT:,} segments; local disk"
          + (f"; built in {built:.0f} s)" if built > 1 else ")"))
    if not (folder / "_index" / "compacted.parquet").exists():
        wall, peak_mb, _ = _measured([sys.executable, "-m", "pipeline.cli", "compact", str(folder)])
        print(f"  {'compact (as the end of the run that wrote them)':<42} {wall:6.1f} s  peak RSS {peak_mb:6.0f} MB")
    for name, args, expect in (
        ("rerun (its saved plan, nothing to do)", ["run", str(archive / "audio"), "-o", str(folder), "--no-progress"],
         "this run: 0 shard(s) transcribed"),
        ("rerun --rescan (lists the archive)", ["run", str(archive / "audio"), "-o", str(folder), "--no-progress",
                                                "--rescan"], "this run: 0 shard(s) transcribed"),
        ("status", ["status", str(folder)], "(complete)"),
        ("verify", ["verify", str(folder)], "OK:"),
        ('query "select count(*) from files"', ["query", str(folder), "select count(*) from files"],
         f"{shards * UNITS_PER_SHARD}"),
    ):
        wall, peak_mb, output = _measured([sys.executable, "-m", "pipeline.cli", *args])
        if expect not in output:
            raise RuntimeError(f"{name} did not say {expect!r}: {output[-2000:]}")
        print(f"  {name:<42} {wall:6.1f} s  peak RSS {peak_mb:6.0f} MB")


def _measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, the process's peak RSS in MB, its output) of `command`."""
    import tempfile

    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited {process.returncode}: {text[-2000:]}")
    return wall, usage.ru_maxrss / 1024, text


def long_files(files: int) -> None:
    """Planning N long local files (hard links of 15-minute MP3 and WAV recordings made
    from a bundled clip) into 10-minute windows: durations from the headers
    (`pipeline.durations`), as bulkscribe plans, against one ffmpeg probe per file, side by
    side on the same files."""
    from unittest import mock

    from pipeline import inputs, windows

    folder = WORK / f"long-{files}"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "audio").mkdir(parents=True)
        for suffix, options in ((".wav", []), (".mp3", ["-c:a", "libmp3lame", "-b:a", "64k"])):
            subprocess.run([_ffmpeg(), "-nostdin", "-loglevel", "error", "-stream_loop", "-1", "-i", str(CLIP),
                            "-t", "900", "-ac", "1", "-ar", "16000", *options, str(folder / f"source{suffix}")],
                           check=True)
        for i in range(files):
            suffix = (".wav", ".mp3")[i % 2]
            os.link(folder / f"source{suffix}", folder / "audio" / f"{i:07d}{suffix}")
        (folder / "done").touch()
    units = inputs.expand([str(folder / "audio")])
    sides = {}
    for name, patch in (("headers (bulkscribe)", contextlib.nullcontext()),
                        ("ffmpeg probe per file", mock.patch.object(windows, "local_duration", lambda path: None))):
        started = time.monotonic()
        with patch:
            planned = windows.split_long(units, 600.0)
        sides[name] = time.monotonic() - started
        assert planned.num_rows == 2 * files, planned.num_rows  # two windows a file on both sides
    print(f"planning {files:,} long local files (15 min, half WAV, half MP3) into 10-minute windows")
    for name, seconds in sides.items():
        print(f"  {name:<24} {seconds:7.2f} s  {seconds / files * 1000:6.2f} ms a file  "
              f"{seconds / sides['headers (bulkscribe)']:6.1f}x the headers")


def long_files_s3(files: int) -> None:
    """N remote files that may be long (hard links of a 100 s MP3 at 32 kbit/s, 400 KB),
    on a moto S3 server: planned into 1-minute windows from their headers, with the time
    and the HTTP requests it takes (a real store answers each in tens of ms, not one)."""
    from pipeline import inputs, windows

    folder = WORK / f"long-s3-{files}"
    if not (folder / "done").exists():
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "audio").mkdir(parents=True)
        source = folder / "source.mp3"
        subprocess.run([_ffmpeg(), "-nostdin", "-loglevel", "error", "-stream_loop", "-1", "-i", str(CLIP),
                        "-t", "100", "-ac", "1", "-ar", "16000", "-c:a", "libmp3lame", "-b:a", "32k", str(source)],
                       check=True)
        for i in range(files):
            os.link(source, folder / "audio" / f"{i:07d}.mp3")
        (folder / "done").touch()
    print(f"planning {files:,} remote MP3 files of 100 s into 1-minute windows (moto S3 server)")
    with moto_s3(folder / "audio", "long") as (endpoint, log, _):
        options = {"endpoint_url": endpoint}
        units = inputs.expand(["s3://long/"], options)
        before, started = _requests(log), time.monotonic()
        planned = windows.split_long(units, 60.0, storage_options=options)
        wall, requests = time.monotonic() - started, _requests(log) - before
    assert planned.num_rows == 2 * files, planned.num_rows  # every file measured and split in two
    print(f"  headers read      {wall:7.2f} s  {wall / files * 1000:6.2f} ms a file  {requests:>7,} requests "
          f"({requests / files:.2f} a file)")


def _ffmpeg() -> str:
    from pipeline.audio import ffmpeg_exe

    return ffmpeg_exe()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="10000,100000", help="archive sizes, comma-separated")
    parser.add_argument("--shards", type=int, default=2000, help="shards for the dispatch overhead (0: skip it)")
    parser.add_argument("--status", default="10000", help="committed shards for `status`, comma-separated (empty: skip)")
    parser.add_argument("--status-s3", default="", help="committed shards for `status` on a moto S3 server, "
                                                        "comma-separated (empty: skip)")
    parser.add_argument("--read", default="", help="shards of a finished folder for status, verify and query, "
                                                   "comma-separated (empty: skip)")
    parser.add_argument("--read-s3", default="", help="shards of a finished folder to verify and query on a moto "
                                                      "S3 server, before and after `bulkscribe compact` (empty: skip)")
    parser.add_argument("--long", default="", help="long local files to plan into windows, comma-separated "
                                                   "(empty: skip)")
    parser.add_argument("--long-s3", default="", help="remote files to plan into windows from their headers, on a "
                                                      "moto S3 server, comma-separated (empty: skip)")
    args = parser.parse_args()
    for files in [int(n) for n in args.long.split(",") if n]:
        long_files(files)
    for files in [int(n) for n in args.long_s3.split(",") if n]:
        long_files_s3(files)
    for shards in [int(n) for n in args.read.split(",") if n]:
        read_side(shards)
    for shards in [int(n) for n in args.status.split(",") if n]:
        status_reads(shards)
    for shards in [int(n) for n in args.status_s3.split(",") if n]:
        status_s3(shards)
    for shards in [int(n) for n in args.read_s3.split(",") if n]:
        read_s3(shards)
    archives = [int(n) for n in args.files.split(",") if n]
    if archives:
        print("time to the first shard (embedded Ray, 10 files per shard)")
    for files in archives:
        first, peak = time_to_first_shard(files)
        print(f"  {files:>9,} files, {files // 10:>7,} shards: first shard started after {first:6.1f} s, "
              f"driver peak RSS {peak:6.0f} MB")
    if not args.shards:
        return
    print(f"dispatch of {args.shards} shards that do nothing, 2 actors")
    sides = dispatch_overhead(args.shards)
    fastest = min(sides.values())
    for name, seconds in sides.items():
        print(f"  {name:<40} {seconds:6.1f} s  {seconds / args.shards * 1000:6.2f} ms a shard  "
              f"{seconds / fastest:5.1f}x the fastest")


if __name__ == "__main__":
    main()

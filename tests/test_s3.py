"""Inputs and outputs on S3 (a real S3 API server on loopback: moto's), and over HTTP."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import subprocess
import sys
import threading

import pytest

from tests.checks import check_output
from tests.helpers import finish, moto_server, run_ok, start
from pipeline.index import reported_markers, write_index
from pipeline.markers import commit_marker, committed_shards, read_marker

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def s3(corpus):
    """A moto S3 server on loopback with the fault corpus uploaded to s3://audio/in/."""
    with moto_server() as endpoint:
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint)
        fs.mkdir("audio")
        for clip in sorted(corpus.iterdir()):
            fs.put_file(str(clip), f"audio/in/{clip.name}")
        yield endpoint


def test_s3_in_and_out_resumes_exactly_once(s3, reference):
    options = {"endpoint_url": s3}
    out = "s3://audio/out-a"
    code, _, stderr = finish(start("s3://audio/in", out, "--storage-option", f"endpoint_url={s3}",
                                   env={"BULKSCRIBE_CRASH_AT": "after_parts_write"}))
    assert code == -9  # the driver was killed between a shard's parts and its marker
    run_ok("s3://audio/in", out, "--storage-option", f"endpoint_url={s3}")
    check_output(out, reference, options)

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3)
    fs.rm_file("audio/out-a/_commits/000002.json")
    stdout = run_ok("s3://audio/in", out, "--storage-option", f"endpoint_url={s3}")
    assert "this run: 1 shard(s) transcribed" in stdout
    check_output(out, reference, options)
    assert "this run: 0 shard(s) transcribed" in run_ok("s3://audio/in", out, "--storage-option", f"endpoint_url={s3}")


def test_endpoint_from_the_environment_and_a_marker_is_create_only(s3, reference):
    from pipeline.store import OutputStore

    run_ok("s3://audio/in", "s3://audio/out-b", env={"AWS_ENDPOINT_URL": s3})
    check_output("s3://audio/out-b", reference, {"endpoint_url": s3})
    from pipeline.query import open_output

    out = open_output("s3://audio/out-b", {"endpoint_url": s3})  # views through s3fs, no DuckDB extension
    assert out.sql("select count(*) from files").fetchall()[0][0] == 13
    assert out.sql("select count(distinct unit_id) from segments").fetchall()[0][0] == 13  # all hold speech
    store = OutputStore("s3://audio/out-b", {"endpoint_url": s3})
    before = read_marker(store, 0)
    impostor = dataclasses.replace(before, node="impostor")
    assert commit_marker(store, 0, impostor) is False  # If-None-Match: * refused it
    assert read_marker(store, 0) == before

    # Compacted, the views read one file a table instead of a part a shard.
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "compact", "s3://audio/out-b",
                             "--storage-option", f"endpoint_url={s3}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = open_output("s3://audio/out-b", {"endpoint_url": s3})
    assert [len(out._parts(t)) for t in ("segments", "files")] == [1, 1]
    assert all("/_index/" in out._parts(t)[0] for t in ("segments", "files"))
    assert out.sql("select count(*) from files").fetchall()[0][0] == 13
    assert out.sql("select count(distinct unit_id) from segments").fetchall()[0][0] == 13


def test_http_inputs(corpus, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(corpus))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        manifest = tmp_path / "urls.txt"
        manifest.write_text(f"{base}/LDC93S1.wav\n{base}/61-70968-0000.flac\n{base}/missing.wav\n")
        out = tmp_path / "out"
        run_ok(str(manifest), out, code_expected=3)  # complete, with a failed file
        from tests.checks import statuses, transcripts

        assert statuses(out) == [("61-70968-0000.flac", "ok", None), ("LDC93S1.wav", "ok", None),
                                 ("missing.wav", "failed", "not_found")]
        assert any("wizard" in t.lower() for *_, t in transcripts(out))
    finally:
        server.shutdown()


def test_a_long_remote_file_is_split_and_downloaded_once_per_node(s3, tmp_path, speech_dir):
    """A long file listed on S3: its duration read from its header (a ranged read), each
    window and seam decoded from the node's one copy, and the transcript whole."""
    import duckdb
    import s3fs

    from pipeline import audio
    from tests.helpers import reading_wav
    from tests.wer import wer

    target, reference = reading_wav(tmp_path / "in", speech_dir, 150)
    s3fs.S3FileSystem(endpoint_url=s3).put_file(str(target), "audio/long/reading.wav")
    out, cache = tmp_path / "out", tmp_path / "cache"
    run_ok("s3://audio/long", out, "--window-minutes", "1", "--storage-option", f"endpoint_url={s3}",
           env={audio.CACHE_ENV: str(cache)})
    files = duckdb.sql(f"select start_s, end_s, status from '{out}/files/*.parquet' order by start_s").fetchall()
    assert len(files) == 3 and all(status == "ok" for *_, status in files)
    assert files[0][0] == 0.0 and files[-1][1] is None
    assert [p.suffix for p in cache.iterdir() if p.suffix != ".lock"] == [".wav"]  # one copy, no partial download
    text = duckdb.sql(f"select string_agg(text, ' ' order by start) from '{out}/segments/*.parquet'").fetchall()[0][0]
    assert wer([reference], [text]) < 0.1
    # The same windows, so the same segments, as the file run from a local folder.
    run_ok(target.parent, tmp_path / "local", "--window-minutes", "1")
    segments = "select start, \"end\", text from '{}/segments/*.parquet' order by start"
    assert duckdb.sql(segments.format(out)).fetchall() == duckdb.sql(segments.format(tmp_path / "local")).fetchall()


def test_listings_are_not_kept_after_expansion(s3):
    import fsspec

    from pipeline import inputs

    options = {"endpoint_url": s3}
    units = inputs.expand(["s3://audio/in"], options)
    assert units.num_rows > 3
    fs, _ = fsspec.core.url_to_fs("s3://audio/in", **options)  # the same cached instance
    assert not fs.dircache


def test_markers_the_index_lacks_are_found_by_listing_only_their_key_ranges(s3):
    from pipeline.records import CommitMarker
    from pipeline.store import OutputStore

    store = OutputStore("s3://audio/ranges", {"endpoint_url": s3})
    for shard in (5, 1005, 2999, 7001):
        commit_marker(store, shard, CommitMarker(shard=shard, attempt=1, node="n", parts={}, units=1, statuses={"ok": 1},
                                         audio_s=1.0, wall_s=1.0))
    write_index(store, [read_marker(store, 5), read_marker(store, 7001)])
    prefixes = []
    find = store.fs.find

    def counted_find(path, prefix="", **kwargs):
        prefixes.append(prefix)
        return find(path, prefix=prefix, **kwargs)

    store.fs.find = counted_find
    try:
        assert committed_shards(store, among=[1005, 2005, 2999, 7001]) == {1005, 2999, 7001}
        assert sorted(prefixes) == ["001", "002", "007"]
        prefixes.clear()
        # A report reads the index, and lists only the ranges of the planned shards it lacks.
        assert [m.shard for m in reported_markers(store, [5, 1005, 1006, 2999, 7001])] == [5, 1005, 2999, 7001]
        assert sorted(prefixes) == ["001", "002"]
    finally:
        del store.fs.find
    assert committed_shards(store) == {5, 1005, 2999, 7001}


def test_verify_on_s3_reads_no_marker_or_part_whose_etag_shows_it_unchanged(s3, transcribed):
    import s3fs

    from pipeline.store import OutputStore
    from pipeline.verify import verify

    fs = s3fs.S3FileSystem(endpoint_url=s3)
    fs.put(str(transcribed), "audio/verified", recursive=True)  # one PUT an object: ETag = MD5
    store = OutputStore("s3://audio/verified", {"endpoint_url": s3})
    reads = []
    read_bytes = store.read_bytes
    store.read_bytes = lambda path: reads.append(path.split("/verified/")[1]) or read_bytes(path)
    result = verify(store)
    assert result.ok and result.shards_committed > 1 and result.shards_reparsed == 0
    assert not [r for r in reads if r.startswith(("_commits/", "segments/", "files/"))]
    assert verify(store, reparse=True).format() == result.format()  # reads and parses everything: the same
    # The same listings give the committed shards and the parts left by uncommitted attempts.
    fs.pipe_file("audio/verified/files/part-009999.parquet", b"left by an attempt that never committed")
    assert "files part of uncommitted shard 9999 (left by an interrupted attempt; a rerun replaces it)" in \
        verify(store).notes

    # Bytes that changed behind a marker's back show in the listing: read, and reported.
    part = "audio/verified/files/part-000000.parquet"
    fs.pipe_file(part, fs.cat_file(part) + b"\0")
    marker = "audio/verified/_commits/000001.json"
    fs.pipe_file(marker, fs.cat_file(marker).replace(b'"attempt": 1', b'"attempt": 7'))
    reads.clear()
    result = verify(store)
    assert "shard 0: sha256 of the files part does not match its marker" in result.problems
    assert any(p.startswith("shard 1: the marker index") for p in result.problems)
    # Only the shards whose listing changed are read, whole.
    assert sorted(r for r in reads if not r.startswith("_")) == [f"{t}/part-00000{s}.parquet" for t in ("files", "segments")
                                                                 for s in (0, 1)]
    assert "_commits/000001.json" in reads


def test_a_read_on_s3_is_one_request(s3):
    import s3fs

    from pipeline.store import OutputStore

    s3fs.S3FileSystem(endpoint_url=s3).pipe_file("audio/one/x.json", b"{}")
    store = OutputStore("s3://audio/one", {"endpoint_url": s3})
    sizes = []
    size = store.fs._size

    async def asked(path):
        sizes.append(path)
        return await size(path)

    store.fs._size = asked
    assert store.read_bytes(store.path("x.json")) == b"{}"
    assert sizes == []  # no HEAD before the GET

"""query, export and open_output on a real output folder."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq

from pipeline.export import format_timestamp, render, target_names
from pipeline.publish import write_part
from pipeline.query import open_output


def bulkscribe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=120)


def test_open_output_gives_datasets_and_views(transcribed):
    out = open_output(str(transcribed))
    assert out.files.count_rows() == 4
    assert out.segments.count_rows() == out.sql("select count(*) from segments").fetchall()[0][0] > 3
    rows = out.sql("select status, count(*) from files group by 1 order by 1").fetchall()
    assert rows == [("no_speech", 1), ("ok", 3)]
    assert out.sql("select count(distinct shard) from plan").fetchall()[0][0] >= 2


def test_views_show_committed_shards_only(transcribed, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(transcribed, copy)
    (copy / "_commits" / "000000.json").unlink()  # as if shard 0 were still being written
    out = open_output(str(copy))
    assert 0 not in {r[0] for r in out.sql("select distinct shard from files").fetchall()}
    assert out.files.count_rows() < 4


def test_files_parts_with_different_manifest_columns_are_matched_by_name(transcribed, tmp_path):
    """A plan appended from a manifest with a new column: the shards written before it
    lack the column, the later ones have it; the views read both, by column name."""
    import pyarrow as pa

    from pipeline.store import OutputStore

    copy = tmp_path / "out"
    shutil.copytree(transcribed, copy)
    store = OutputStore(str(copy))
    plan = pq.read_table(copy / "_plan" / "part-000000.parquet")
    last = max(plan.column("shard").to_pylist())
    later = plan.filter(pa.compute.equal(plan.column("shard"), last))
    tape = pa.array(["reel 7"] * later.num_rows)
    pq.write_table(plan.filter(pa.compute.not_equal(plan.column("shard"), last)), copy / "_plan" / "part-000000.parquet")
    pq.write_table(later.append_column("tape", tape), copy / "_plan" / "part-000001.parquet")
    files = pq.read_table(copy / "files" / f"part-{last:06d}.parquet")
    written = write_part(store, "files", last, files.append_column("tape", pa.array(["reel 7"] * files.num_rows)))
    marker = json.loads((copy / "_commits" / f"{last:06d}.json").read_text())
    marker["parts"]["files"] = written.to_json()
    (copy / "_commits" / f"{last:06d}.json").write_text(json.dumps(marker))

    out = open_output(str(copy))
    assert not out.uniform
    rows = out.sql("select shard, tape, status from files order by shard").fetchall()
    assert len(rows) == 4 and all(s is not None for _, _, s in rows)
    assert {(shard, tape) for shard, tape, _ in rows if tape is not None} == {(last, "reel 7")}
    assert sum(1 for _, tape, _ in rows if tape is None) == 4 - files.num_rows
    assert out.files.to_table().column("tape").null_count == 4 - files.num_rows
    assert out.sql("select count(*) from plan where tape = 'reel 7'").fetchall()[0][0] == later.num_rows


def test_query_command_formats(transcribed, tmp_path):
    sql = "select uri, status, duration_s from files order by uri"
    table = bulkscribe("query", str(transcribed), sql)
    assert table.returncode == 0 and "status" in table.stdout and "no_speech" in table.stdout
    rows = list(csv.DictReader(io.StringIO(bulkscribe("query", str(transcribed), sql, "--format", "csv").stdout)))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok", "no_speech"}
    lines = bulkscribe("query", str(transcribed), sql, "--format", "json").stdout.splitlines()
    assert [json.loads(line)["status"] for line in lines].count("ok") == 3
    target = tmp_path / "r.parquet"
    assert bulkscribe("query", str(transcribed), sql, "--format", "parquet", "--to", str(target)).returncode == 0
    assert pq.read_table(target).num_rows == 4
    bad = bulkscribe("query", str(transcribed), "select nope from files")
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_export_mirrors_folders_and_follows_whispers_formats(transcribed, tmp_path):
    for fmt in ("srt", "vtt", "txt", "json", "tsv"):
        done = bulkscribe("export", str(transcribed), "--format", fmt, "--to", str(tmp_path / fmt))
        assert done.returncode == 0, done.stderr
    srt = (tmp_path / "srt" / "misc" / "jfk.srt").read_text()
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n.+\n\n2\n", srt)
    assert "ask not what your country" in srt.lower()
    assert (tmp_path / "srt" / "librispeech" / "61-70968-0000.srt").exists()
    assert not (tmp_path / "srt" / "misc" / "empty_noise.srt").exists()  # no speech: no empty subtitle file
    vtt = (tmp_path / "vtt" / "misc" / "jfk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n00:00.000 --> 00:") or re.match(r"WEBVTT\n\n00:0\d\.\d{3} --> ", vtt)
    tsv = (tmp_path / "tsv" / "misc" / "LDC93S1.tsv").read_text().splitlines()
    assert tsv[0] == "start\tend\ttext" and all(re.match(r"\d+\t\d+\t\S", line) for line in tsv[1:])
    data = json.loads((tmp_path / "json" / "misc" / "jfk.json").read_text())
    assert data["language"] == "en" and "fellow americans" in data["text"].lower() and data["segments"]
    txt = (tmp_path / "txt" / "misc" / "LDC93S1.txt").read_text()
    assert "greasy wash water" in txt.lower()
    only = bulkscribe("export", str(transcribed), "--format", "txt", "--to", str(tmp_path / "w"),
                      "--where", "uri like '%jfk%'")
    assert only.returncode == 0 and [p.name for p in (tmp_path / "w").rglob("*.txt")] == ["jfk.txt"]


def test_timestamps_and_names_match_whispers_writers():
    assert format_timestamp(3661.5, always_include_hours=True, decimal_marker=",") == "01:01:01,500"
    assert format_timestamp(5.25) == "00:05.250"
    assert format_timestamp(3600.0) == "01:00:00.000"
    seg = {"start": 0.0, "end": 1.5, "text": " a --> b"}
    assert render("srt", [seg], {}) == "1\n00:00:00,000 --> 00:00:01,500\na -> b\n\n"
    names = target_names(["/a/x/one.mp3", "/a/y/two.wav", "/a/y/two.flac"], "srt")
    assert names == {"/a/x/one.mp3": "x/one.srt", "/a/y/two.wav": "y/two.wav.srt", "/a/y/two.flac": "y/two.flac.srt"}
    assert target_names(["s3://b/k/a.mp3", "s3://b/k/sub/b.mp3"], "vtt") == {"s3://b/k/a.mp3": "a.vtt", "s3://b/k/sub/b.mp3": "sub/b.vtt"}


def test_search_finds_phrases_and_words_ranked_with_context(transcribed):
    from pipeline.search import highlight, search

    out = open_output(str(transcribed))
    hits = search(out, '"ASK NOT" country')
    assert hits and "jfk" in hits[0].uri and "ask not" in hits[0].text.lower()
    assert all("country" in h.text.lower() for h in hits)
    assert search(out, "country,") == search(out, "Country")  # punctuation and case do not matter
    assert search(out, "countr") == []  # whole words only
    assert search(out, "wizard", language="de") == [] and search(out, "wizard", uri_like="%61-70968%")
    assert search(out, "wizard", min_logprob=0.0) == []
    first = [h for h in search(out, "ask") if "jfk" in h.uri]
    assert any(h.after or h.before for h in first)  # context from the neighbouring segment
    assert highlight("And so, my fellow Americans: ask not!", "'ask not'", ("[", "]")) == "And so, my fellow Americans: [ask not]!"
    cli = bulkscribe("search", str(transcribed), "greasy wash")
    assert cli.returncode == 0 and "[greasy] [wash]" in cli.stdout.lower() and "1 hit(s)" in cli.stdout


def test_status_prints_cost_per_audio_hour(transcribed):
    import json as _json

    runs = [_json.loads(p.read_text()) for p in (transcribed / "_runs").glob("*.json")]
    node_hours = sum(r["wall_s"] * r["nodes"] for r in runs) / 3600
    audio_h = sum(_json.loads(p.read_text())["audio_s"] for p in (transcribed / "_commits").glob("*.json")) / 3600
    done = bulkscribe("status", str(transcribed), "--node-price", "0.10")
    assert done.returncode == 0
    (line,) = [ln for ln in done.stdout.splitlines() if ln.startswith("cost:")]
    assert f"{node_hours:.3f} node-hours x 0.1 = {node_hours * 0.1:.4f}" in line
    assert f"{node_hours * 0.1 / audio_h:.4f} per audio hour" in line

"""Search speed on a million segments and more, made from real transcripts.

Transcribes the bundled clips once (tiny.en, beam 1), then copies their segments into
an output folder of the same layout (plan, parts, commit markers), each copy under
its own file URI, until there are --segments of them. Then times, side by side in one
run, `bulkscribe search`'s query (median of --repeat runs) for a rare word, a common
word, two words, and a phrase, and a plain count for scale.

    python bench/search.py [--segments 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.inputs import unit_id
from pipeline.ledger import append_plan, read_job, write_job
from pipeline.markers import commit_marker
from pipeline.publish import write_part
from pipeline.query import open_output
from pipeline.records import CommitMarker
from pipeline.search import search
from pipeline.store import OutputStore

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"
SHARD_SEGMENTS = 20_000
QUERIES = ("wizard", "the", "country ask", '"fellow americans"')


def real_output() -> Path:
    out = WORK / "search-source"
    if not (out / "job.json").exists():
        subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(ROOT / "tests" / "data" / "speech"),
                        "--output", str(out), "--beam-size", "1", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return out


def build(source: Path, target: Path, segments: int) -> None:
    """An output folder holding `segments` segments, copies of the source's under new URIs."""
    src = open_output(str(source))
    seg = src.segments.to_table()
    files = src.files.to_table()
    shutil.rmtree(target, ignore_errors=True)
    store = OutputStore(str(target))
    write_job(store, read_job(OutputStore(str(source))))
    copies = -(-segments // seg.num_rows)
    per_shard = max(1, SHARD_SEGMENTS // seg.num_rows)
    plan_rows = []
    for shard, first in enumerate(range(0, copies, per_shard)):
        seg_parts, file_parts = [], []
        for copy in range(first, min(copies, first + per_shard)):
            uris = pc.binary_join_element_wise(pa.scalar(f"/archive/{copy:07d}"), seg.column("uri"), "")
            ids = pa.array([unit_id(u) for u in uris.to_pylist()])
            seg_parts.append(seg.set_column(0, "unit_id", ids).set_column(1, "uri", uris)
                             .set_column(2, "shard", pa.array([shard] * seg.num_rows, pa.int32())))
            furis = pc.binary_join_element_wise(pa.scalar(f"/archive/{copy:07d}"), files.column("uri"), "")
            fids = pa.array([unit_id(u) for u in furis.to_pylist()])
            file_parts.append(files.set_column(0, "unit_id", fids).set_column(1, "uri", furis)
                              .set_column(2, "shard", pa.array([shard] * files.num_rows, pa.int32())))
        seg_t, files_t = pa.concat_tables(seg_parts), pa.concat_tables(file_parts)
        parts = {"segments": write_part(store, "segments", shard, seg_t), "files": write_part(store, "files", shard, files_t)}
        commit_marker(store, shard, CommitMarker(shard=shard, attempt=1, parts=parts, units=files_t.num_rows,
                                         statuses={"ok": files_t.num_rows}, audio_s=0.0, wall_s=0.0, node="bench"))
        plan_rows.append(pa.table({"shard": pa.array([shard] * files_t.num_rows, pa.int32()),
                                   "unit_id": files_t.column("unit_id"), "uri": files_t.column("uri")}))
    append_plan(store, pa.concat_tables(plan_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    target = WORK / "search-1m"
    t = time.perf_counter()
    build(real_output(), target, args.segments)
    built_s = time.perf_counter() - t
    out = open_output(str(target))
    total = out.sql("select count(*) from segments").fetchall()[0][0]
    size_mb = sum(p.stat().st_size for p in (target / "segments").glob("*.parquet")) / 1e6
    print(f"{total:,} segments in {len(list((target / 'segments').glob('*.parquet')))} parts, {size_mb:.0f} MB "
          f"(built in {built_s:.0f} s)")
    timings = {}
    for name, action in [("count(*)", lambda: out.sql("select count(*) from segments").fetchall())] + [
        (f"search {q}", lambda q=q: search(out, q, limit=20)) for q in QUERIES
    ]:
        runs = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            result = action()
            runs.append(time.perf_counter() - t)
        timings[name] = statistics.median(runs)
        hits = len(result) if isinstance(result, list) and name.startswith("search") else ""
        print(f"{name:<28} {timings[name]:6.2f} s  {total / timings[name] / 1e6:6.1f} M segments/s  {hits}")
    slowest = max(v for k, v in timings.items() if k.startswith("search"))
    print(f"slowest search / count(*): {slowest / timings['count(*)']:.1f}x")


if __name__ == "__main__":
    main()

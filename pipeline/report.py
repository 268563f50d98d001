"""What a job did, read back from its output folder alone: for `run`'s last lines and `status`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc

from pipeline.index import all_markers, reported_markers
from pipeline.ledger import read_plan, run_records
from pipeline.quality import FLAGS
from pipeline.records import CommitMarker
from pipeline.schema import STATUSES
from pipeline.store import OutputStore


@dataclass
class Summary:
    output: str
    shards_planned: int
    shards_committed: int
    units_planned: int
    units_done: int
    ok: int
    no_speech: int
    failed: int
    audio_s: float  # committed audio, all runs
    wall_s: float  # wall time of the runs counted in `run_audio_s`
    run_audio_s: float = 0.0  # audio those runs transcribed
    node_hours: float = 0.0
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)  # error_type -> (count, example)
    flags: dict[str, int] = field(default_factory=dict)  # flag -> files of `ok` status that carry it
    decode_warnings: int = 0  # units whose audio decoded shorter than announced, or with errors
    # `ok` units per language ("en"), and per language and model for the units routed to
    # the language-check model ("ru base"), most first
    languages: dict[str, int] = field(default_factory=dict)
    shards_ran: int | None = None
    shards_skipped: int | None = None
    # retry-failed: the failed units it transcribed again.
    retried: int | None = None
    # Where this run's Ray kept its own logs (workers' output, Ray's warnings).
    ray_logs: str | None = None

    @property
    def rtfx(self) -> float | None:
        """Audio transcribed per wall second, over runs that recorded both (a killed run
        records neither, so its shards do not inflate the figure)."""
        return self.run_audio_s / self.wall_s if self.wall_s > 0 and self.run_audio_s > 0 else None

    @property
    def complete(self) -> bool:
        return self.shards_committed == self.shards_planned


def summarize(store: OutputStore, *, audio_s: float | None = None, wall_s: float | None = None,
              markers: list[CommitMarker] | None = None) -> Summary:
    """Counts over committed shards. `audio_s`/`wall_s`: what one run transcribed and its
    wall time; by default the totals of the runs that recorded themselves. `markers`:
    the folder's markers, if the caller has just read them (else those of the planned
    shards, from the marker index and the markers it lacks: `index.reported_markers`;
    in a folder without a plan, every marker)."""
    plan = read_plan(store)
    if markers is None:
        markers = all_markers(store) if plan is None else reported_markers(store, pc.unique(plan.column("shard")).to_pylist())
    statuses = {s: sum(m.count(s) for m in markers) for s in STATUSES}
    runs = run_records(store)
    summary = Summary(
        output=store.uri(),
        shards_planned=0 if plan is None else len(pc.unique(plan.column("shard"))),
        shards_committed=len(markers),
        units_planned=0 if plan is None else plan.num_rows,
        units_done=sum(m.units for m in markers),
        ok=statuses["ok"],
        no_speech=statuses["no_speech"],
        failed=statuses["failed"],
        audio_s=sum(m.audio_s for m in markers),
        wall_s=sum(r.wall_s for r in runs) if wall_s is None else wall_s,
        run_audio_s=sum(r.audio_s for r in runs) if audio_s is None else audio_s,
        node_hours=sum(r.wall_s * r.nodes for r in runs) / 3600,
        flags={f: n for f in FLAGS if (n := sum(m.flags.get(f, 0) for m in markers))},
        decode_warnings=sum(m.decode_warnings for m in markers),
        languages=dict(sum((Counter(m.languages) for m in markers), Counter()).most_common()),
    )
    if summary.failed:
        summary.failures = _failures(store, [m for m in markers if m.count("failed")])
    return summary


def _failures(store: OutputStore, markers: list[CommitMarker]) -> dict[str, tuple[int, str]]:
    """error_type -> (failed units, an example), most frequent first: from the markers,
    or from the `files` part of a shard whose marker predates error counts."""
    found: dict[str, tuple[int, str]] = {}
    for marker in markers:
        for kind, count in marker.errors.items():
            total, example = found.get(kind, (0, marker.error_examples.get(kind, "")))
            found[kind] = (total + count, example)
    for shard in [m.shard for m in markers if not m.errors]:
        files = store.read_parquet(store.part_path("files", shard))
        failed = files.filter(pc.equal(files.column("status"), "failed"))
        for kind, uri, message in zip(
            failed.column("error_type").to_pylist(),
            failed.column("uri").to_pylist(),
            failed.column("error_message").to_pylist(),
        ):
            count, example = found.get(kind, (0, f"{uri}: {message}"))
            found[kind] = (count + 1, example)
    return dict(sorted(found.items(), key=lambda kv: -kv[1][0]))


def one_line(message: str, limit: int = 200) -> str:
    """A message (ffmpeg's span several lines) as one line of at most `limit` characters;
    the whole of it stays in the `files` table."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_cost(s: Summary, node_price: float) -> str:
    """Cost from the recorded node-hours (wall time of each run times the nodes it used)."""
    total = s.node_hours * node_price
    hours = s.audio_s / 3600
    per = f"{total / hours:.4f} per audio hour" if hours > 0 else "no audio yet"
    return f"cost:    {s.node_hours:.3f} node-hours x {node_price:g} = {total:.4f}; {per}"


def format_summary(s: Summary, *, this_run: bool = False) -> str:
    hours = s.audio_s / 3600
    rtfx = f"{s.rtfx:.1f}x real time" if s.rtfx else "n/a"
    lines = []
    if this_run and s.retried is not None:
        still = ", ".join(f"{count} x {kind}" for kind, (count, _) in s.failures.items())
        lines.append(f"retried: {s.retried} failed file(s) of {s.shards_ran} shard(s); "
                     + (f"{s.failed} still failing: {still}" if s.failed else "none failing now"))
    elif this_run and s.shards_ran is not None:
        lines.append(f"this run: {s.shards_ran} shard(s) transcribed, {s.shards_skipped} already committed")
    state = "complete" if s.complete else f"{s.shards_planned - s.shards_committed} shard(s) still to run"
    lines += [
        f"output:  {s.output}  ({state})",
        f"shards:  {s.shards_committed}/{s.shards_planned} committed; units {s.units_done}/{s.units_planned}",
        f"files:   {s.ok} ok, {s.no_speech} no_speech, {s.failed} failed",
        f"audio:   {hours:.3f} h ({s.audio_s:.1f} s) committed; "
        + (f"this run transcribed {s.run_audio_s:.1f} s in {s.wall_s:.1f} s wall: {rtfx}" if this_run else
           f"finished runs transcribed {s.run_audio_s:.1f} s in {s.wall_s:.1f} s wall: {rtfx}"),
    ]
    if len(s.languages) > 1 or any(" " in key for key in s.languages):
        routed = sum(n for key, n in s.languages.items() if " " in key)
        lines.append("languages: " + ", ".join(f"{n} {key.replace(' ', ' by ')}" for key, n in s.languages.items())
                     + (f" ({routed} file(s) in another language transcribed by its model)" if routed else ""))
    for kind, (count, example) in s.failures.items():
        lines.append(f"failed:  {count} x {kind}, e.g. {one_line(example)}")
    if s.failed:
        lines.append(f"retry:   bulkscribe retry-failed {s.output}   (full messages: bulkscribe query {s.output} "
                     "\"select uri, error_type, error_message from files where status = 'failed'\")")
    if s.decode_warnings:
        lines.append(f"warning: {s.decode_warnings} file(s) decoded with a warning (missing audio or decode errors); "
                     f"list them with bulkscribe query {s.output} "
                     "\"select uri, decode_warning from files where decode_warning is not null\"")
    if s.flags:
        counts = ", ".join(f"{n} {flag}" for flag, n in s.flags.items())
        lines.append(f"flagged: {counts} (doubtful transcripts: README, \"Doubtful transcripts\"; list them with "
                     f"bulkscribe query {s.output} \"select uri, flags from files where len(flags) > 0\")")
    if this_run and s.ray_logs:
        lines.append(f"ray logs: {s.ray_logs}")
    glob = f"{s.output.rstrip('/')}/segments/*.parquet"
    lines.append(
        "query:   python -c \"import duckdb; print(duckdb.sql("
        f"\\\"select uri, start, text from '{glob}' order by uri, start limit 5\\\"))\""
    )
    return "\n".join(lines)

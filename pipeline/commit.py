"""Commit protocol of one shard: stage both parts, create the marker, publish the parts.

An attempt writes the shard's `segments` and `files` parts under names of its own
(`_staged/`), then creates the marker that names the attempt and holds the parts' sha256
(`markers.commit_marker`, create-only: the first attempt to commit wins), and only then
publishes its parts under the shard's fixed names (`publish.publish`, each part
replaced conditionally on what was there). An attempt that lost, or whose run lost the
folder's lease while it stalled, can write nothing a reader sees: its staged parts are
named by no marker, and its marker or publication is refused by the store. `retry-failed`
replaces a marker conditionally on the one it read (`OutputStore.replace_if`).
"""

from __future__ import annotations

import logging
import resource
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from pipeline import lease, quality
from pipeline.config import WorkerConfig
from pipeline.faults import crashpoint
from pipeline.markers import commit_marker
from pipeline.parquet import parquet_bytes
from pipeline.publish import publish, stage_part, staged_path
from pipeline.records import CommitMarker, iso
from pipeline.schema import STATUSES, FileRow, SegmentRow, files_table, manifest_columns, segments_table
from pipeline.shardcheck import shard_problems
from pipeline.store import OutputStore, json_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardResult:
    """What the driver learns of one shard, for progress and the summary."""

    shard: int
    attempt: int
    skipped: bool
    committed: bool
    units: int
    ok: int
    no_speech: int
    failed: int
    audio_s: float
    wall_s: float
    node: str
    peak_rss_mb: float | None = None
    # Not written: the driver's lease was taken over by another run meanwhile.
    lease_lost: bool = False

    @classmethod
    def of(cls, marker: CommitMarker, *, skipped: bool, committed: bool = False) -> "ShardResult":
        return cls(
            shard=marker.shard,
            attempt=marker.attempt,
            skipped=skipped,
            committed=committed,
            units=marker.units,
            ok=marker.count("ok"),
            no_speech=marker.count("no_speech"),
            failed=marker.count("failed"),
            audio_s=marker.audio_s,
            wall_s=marker.wall_s,
            node=marker.node,
            peak_rss_mb=marker.peak_rss_mb,
        )

    @classmethod
    def not_written(cls, shard: int, attempt: int, units: int, node: str) -> "ShardResult":
        """A shard whose parts were not written because the lease was lost."""
        return cls(shard=shard, attempt=attempt, skipped=True, committed=False, units=units, ok=0, no_speech=0,
                   failed=0, audio_s=0.0, wall_s=0.0, node=node, lease_lost=True)


def may_write(store: OutputStore, config: WorkerConfig, shard: int) -> bool:
    """Whether the run that sent this shard still holds the folder. Another run that took
    the lease over may be writing this very shard: parts written now could replace its
    committed ones with different timings (one read per shard; the window left is the
    moment between this read and the writes)."""
    if config.lease_owner is None or lease.holds(store, config.lease_owner):
        return True
    logger.error("the lease of %s was taken over by another run: shard %06d is not written", store.uri(), shard)
    return False


@dataclass(frozen=True)
class Staged:
    """Both parts of one attempt at a shard, staged, and the marker that would commit them."""

    marker: CommitMarker
    # The parts' bytes by table, for `publish.publish`.
    blobs: dict[str, bytes]

    def commit(self, store: OutputStore) -> bool:
        """Create the marker, then publish the parts; False (its staged parts removed) if
        another attempt committed the shard first."""
        shard = self.marker.shard
        if not commit_marker(store, shard, self.marker):
            self.discard(store)
            return False
        crashpoint("after_marker")
        publish(store, shard, self.marker.staged, self.blobs, first=True)
        return True

    def replace(self, store: OutputStore, expected: str | None) -> bool:
        """`retry-failed`: replace the shard's marker, if it is still the version
        `expected` read before the shard was transcribed again, then publish the parts.
        False (nothing written but the staged parts, removed) when another run replaced
        the marker meanwhile."""
        shard = self.marker.shard
        if store.replace_if(store.marker_path(shard), json_bytes(self.marker.to_json()), expected) is None:
            logger.error("shard %06d: its marker was replaced by another run meanwhile; this retry is dropped", shard)
            self.discard(store)
            return False
        crashpoint("after_marker")
        return publish(store, shard, self.marker.staged, self.blobs)

    def discard(self, store: OutputStore) -> None:
        for table in self.blobs:
            store.delete(staged_path(store, table, self.marker.shard, self.marker.staged))


def stage_parts(
    shard: int,
    units: pa.Table,
    file_rows: list[FileRow],
    segment_rows: list[SegmentRow],
    store: OutputStore,
    config: WorkerConfig,
    attempt: int,
    started: float,
    node: str,
) -> Staged:
    """Stage both parts of `shard` (the `files` rows followed by the manifest columns of
    its plan rows `units`) under names of this attempt; return them with the marker that
    commits them. The bytes are first checked as `verify` would check them
    (`Part.checked`); parts that fail are written all the same, unchecked, for `verify`
    to report."""
    tables = {"segments": segments_table(segment_rows), "files": files_table(file_rows, manifest_columns(units))}
    data = {name: (parquet_bytes(table), table.num_rows) for name, table in tables.items()}
    problems = shard_problems(shard, data, units.column("unit_id").to_pylist())
    for problem in problems:
        logger.error("written as it is, for verify to report: %s", problem)
    token = uuid.uuid4().hex
    parts = {name: stage_part(store, name, shard, token, blob, rows, checked=not problems)
             for name, (blob, rows) in data.items()}
    crashpoint("after_parts_write")
    finished = time.time()
    failed = [r for r in file_rows if r.status == "failed"]
    marker = CommitMarker(
        shard=shard,
        staged=token,
        attempt=attempt,
        fingerprint=config.fingerprint,
        node=node,
        lease=config.lease_owner,
        parts=parts,
        units=len(file_rows),
        statuses={s: sum(r.status == s for r in file_rows) for s in STATUSES},
        flags={f: sum(f in (r.flags or ()) for r in file_rows) for f in quality.FLAGS},
        errors=dict(Counter(r.error_type for r in failed)),
        error_examples={r.error_type: f"{r.uri}: {r.error_message}" for r in reversed(failed)},
        decode_warnings=sum(r.decode_warning is not None for r in file_rows),
        languages=dict(Counter(r.language if r.model == config.model_name else f"{r.language} {r.model}"
                               for r in file_rows if r.status == "ok" and r.language is not None)),
        audio_s=sum(r.duration_s or 0.0 for r in file_rows),
        decode_s=sum(r.decode_s or 0.0 for r in file_rows),
        transcribe_s=sum(r.transcribe_s or 0.0 for r in file_rows),
        started_at=iso(started),
        finished_at=iso(finished),
        wall_s=finished - started,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return Staged(marker, {name: blob for name, (blob, _) in data.items()})


def retry_intent_path(store: OutputStore, shard: int) -> str:
    """`_retry/NNNNNN.json`: written before `retry-failed` rewrites a shard, removed once
    its new marker is in place; one left behind is redone by the next `retry-failed`."""
    return store.path("_retry", f"{shard:06d}.json")

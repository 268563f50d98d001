"""The JSON records of an output folder, typed: `job.json`, commit markers and run records.

Each is a frozen dataclass; `to_json` gives what `OutputStore` writes and `from_json`
reads it back, ignoring keys it does not know (a newer bulkscribe wrote them) and
filling in those an older one did not write.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = _field_names(cls)
    return {k: v for k, v in data.items() if k in names}


class _Record:
    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class JobRecord(_Record):
    """`job.json`: written by the first run into a folder; every later run and
    `retry-failed` must match its fingerprint."""

    output: str
    created_at: str
    # JobSpec.public_dict(): the spec without storage options.
    spec: dict[str, Any]
    fingerprint: str
    # The options that change transcripts (config.fingerprint_fields), hashed into `fingerprint`.
    fingerprint_fields: dict[str, Any]
    # {"name", "sha256"}
    model: dict[str, str]
    shard_audio_s: float
    window_s: float | None = None
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Part(_Record):
    """One Parquet part of a shard, as its marker records it."""

    rows: int
    bytes: int
    sha256: str
    # The writer parsed these very bytes before writing them and found them consistent
    # with the shard's other part and its planned units (`shardcheck.shard_problems`), so
    # `verify` need not parse them again while their sha256 still matches.
    checked: bool = False
    # MD5 of the bytes (hex): what an object store's listing gives as a single PUT's ETag,
    # so `verify` can see that a part is unchanged without reading it. None in markers
    # written before it was recorded.
    md5: str | None = None


@dataclass(frozen=True)
class CommitMarker(_Record):
    """`_commits/NNNNNN.json`: a shard is done once its marker exists (created create-only,
    after both parts were staged), and its parts are then exactly the bytes whose sha256
    it holds: the staged parts of attempt `staged`, published under the shard's names."""

    shard: int
    attempt: int
    node: str
    # "segments" and "files"
    parts: dict[str, Part]
    units: int
    # Units per status (schema.STATUSES) and per flag (quality.FLAGS).
    statuses: dict[str, int]
    audio_s: float
    wall_s: float
    fingerprint: str | None = None
    # The lease of the run that wrote the shard (pipeline.lease).
    lease: str | None = None
    flags: dict[str, int] = field(default_factory=dict)
    # Failed units per error_type, and one "uri: message" of each type (for `status`
    # without reading parts); empty in markers written before these fields existed.
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    decode_warnings: int = 0
    # `ok` units per "language" (e.g. "en"), and per "language model" where a unit in
    # another language was transcribed by the language-check model ("ru base"); empty in
    # markers written before.
    languages: dict[str, int] = field(default_factory=dict)
    decode_s: float = 0.0
    transcribe_s: float = 0.0
    started_at: str | None = None
    finished_at: str | None = None
    # The actor process's peak resident memory when the shard was written (ffmpeg not included).
    peak_rss_mb: float | None = None
    # The attempt whose staged parts (`_staged/TABLE/NNNNNN-ATTEMPT.parquet`) this marker
    # commits and publishes; None in markers written before parts were staged (their
    # parts were written in place).
    staged: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CommitMarker":
        known = _known(cls, data)
        known["parts"] = {name: Part.from_json(part) for name, part in known.get("parts", {}).items()}
        return cls(**known)

    def count(self, status: str) -> int:
        return self.statuses.get(status, 0)


@dataclass(frozen=True)
class RunRecord(_Record):
    """`_runs/*.json`: one per `run` or `retry-failed` that finished (a killed run leaves
    none), for the real-time factor and node-hours of `status`."""

    started_at: str
    finished_at: str
    wall_s: float = 0.0
    shards_ran: int = 0
    shards_skipped: int = 0
    # Audio this run transcribed (not the shards it skipped).
    audio_s: float = 0.0
    # Nodes that did work.
    nodes: int = 0


def iso(ts: float) -> str:
    """A record's timestamp: UTC, to the second (`started_at`, `finished_at`, `created_at`)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")

"""The check that follows every fault scenario, for any storage fsspec reaches."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.store import OutputStore
from pipeline.verify import verify


def _table(out: str | Path, name: str, storage_options: dict | None = None) -> pa.Table:
    store = OutputStore(str(out), storage_options)
    parts = [store.read_parquet(p) for p in store.glob(store.path(name, "part-*.parquet"))]
    return pa.concat_tables(parts, promote_options="permissive")


def transcripts(out: str | Path, storage_options: dict | None = None) -> list[tuple]:
    """(file name, segment, start, end, text) of every segment; file names, not URIs,
    so that runs over the same clips under other URLs compare equal."""
    rows = _table(out, "segments", storage_options).select(["uri", "segment", "start", "end", "text"]).to_pylist()
    return sorted(
        (r["uri"].rsplit("/", 1)[-1], r["segment"], round(r["start"], 3), round(r["end"], 3), r["text"]) for r in rows
    )


def statuses(out: str | Path, storage_options: dict | None = None) -> list[tuple]:
    rows = _table(out, "files", storage_options).select(["uri", "status", "error_type"]).to_pylist()
    return sorted((r["uri"].rsplit("/", 1)[-1], r["status"], r["error_type"]) for r in rows)


def check_output(out: str | Path, reference: str | Path, storage_options: dict | None = None) -> None:
    """Every planned unit exactly once in `files`; no (unit_id, segment) twice; every
    marker's sha256 matching its parts; transcripts and statuses equal to `reference`'s."""
    store = OutputStore(str(out), storage_options)
    result = verify(store, reparse=True)
    assert result.ok, result.format()
    assert verify(store).format() == result.format()  # parts their writer checked are not parsed again
    assert result.units_found == result.units_planned > 0
    assert statuses(out, storage_options) == statuses(reference)
    assert transcripts(out, storage_options) == transcripts(reference)

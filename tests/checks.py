"""The check that follows every fault scenario."""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipeline.store import OutputStore
from pipeline.verify import verify


def transcripts(out: str | Path) -> list[tuple]:
    """(file name, segment, start, end, text) of every segment; file names, not URIs,
    so that runs over the same clips under other URLs compare equal."""
    rows = duckdb.sql(
        f"select uri, segment, start, \"end\", text from read_parquet('{out}/segments/*.parquet')"
    ).fetchall()
    return sorted((uri.rsplit("/", 1)[-1], seg, round(a, 3), round(b, 3), text) for uri, seg, a, b, text in rows)


def statuses(out: str | Path) -> list[tuple]:
    rows = duckdb.sql(f"select uri, status, error_type from read_parquet('{out}/files/*.parquet')").fetchall()
    return sorted((uri.rsplit("/", 1)[-1], status, error) for uri, status, error in rows)


def check_output(out: str | Path, reference: str | Path, storage_options: dict | None = None) -> None:
    """Every planned unit exactly once in `files`; no (unit_id, segment) twice; every
    marker's sha256 matching its parts; transcripts and statuses equal to `reference`'s."""
    result = verify(OutputStore(str(out), storage_options))
    assert result.ok, result.format()
    assert result.units_found == result.units_planned > 0
    local = str(out).replace("flaky://", "")
    assert statuses(local) == statuses(reference)
    assert transcripts(local) == transcripts(reference)

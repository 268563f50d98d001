"""Read an output folder: pyarrow datasets and a DuckDB connection with its views.

Only committed shards are read: the views list the parts whose marker exists, so a
shard still being written (or left by a crash) never shows. Any storage fsspec reaches
works the same way (local, s3://, gs://), with no DuckDB extension to download.

    from pipeline import open_output
    out = open_output("out")
    out.sql("select language, sum(duration_s) / 3600 as hours from files group by 1").show()
    table = out.segments.to_table(filter=pc.field("no_speech_prob") < 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.schema import FILES_SCHEMA, SEGMENTS_SCHEMA
from pipeline.store import OutputStore

VIEWS = ("segments", "files", "plan")


@dataclass
class Output:
    """One output folder, opened for reading."""

    store: OutputStore
    segments: ds.Dataset
    files: ds.Dataset
    plan: ds.Dataset
    _con: Any = None

    @property
    def con(self):
        """A DuckDB connection with the views `segments`, `files` and `plan`."""
        if self._con is None:
            import duckdb

            self._con = duckdb.connect()
            for name in VIEWS:
                self._con.register(name, getattr(self, name))
        return self._con

    def sql(self, query: str):
        """Run DuckDB SQL over the views; returns a DuckDB relation."""
        return self.con.sql(query)


def open_output(url: str, storage_options: dict[str, Any] | None = None) -> Output:
    """Open the output folder at `url` (a path or any fsspec URL) for reading.

    Raises:
        FileNotFoundError: the folder holds no bulkscribe job.
    """
    store = OutputStore(url, storage_options)
    if store.read_job() is None:
        raise FileNotFoundError(f"{url} holds no bulkscribe job (no job.json)")
    committed = sorted(store.committed())
    return Output(
        store=store,
        segments=_dataset(store, [store.part_path("segments", s) for s in committed], SEGMENTS_SCHEMA),
        files=_dataset(store, [store.part_path("files", s) for s in committed], None),
        plan=_dataset(store, store.plan_parts(), None),
    )


def _dataset(store: OutputStore, paths: list[str], schema: pa.Schema | None) -> ds.Dataset:
    if not paths:
        empty = schema if schema is not None else FILES_SCHEMA
        return ds.dataset(empty.empty_table())
    # Manifest columns may differ between plan appends: unify the part schemas by name.
    if schema is None:
        schemas = [ds.dataset(p, filesystem=store.fs, format="parquet").schema for p in paths]
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    return ds.dataset(paths, schema=schema, filesystem=store.fs, format="parquet")

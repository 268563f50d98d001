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

from pipeline.schema import PLAN_SCHEMA, SEGMENTS_SCHEMA, files_schema
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
    plan_parts = store.plan_parts()
    # Manifest columns may differ between plan appends: unify the plan parts' schemas (a
    # few footers). The files parts' schema follows from it, so that none of them is
    # opened before a query reads it (10^5 parts would be 10^5 reads).
    plan_schema = (pa.unify_schemas([ds.dataset(p, filesystem=store.fs, format="parquet").schema for p in plan_parts],
                                    promote_options="permissive") if plan_parts else PLAN_SCHEMA)
    return Output(
        store=store,
        segments=_dataset(store, [store.part_path("segments", s) for s in committed], SEGMENTS_SCHEMA),
        files=_dataset(store, [store.part_path("files", s) for s in committed], files_schema(plan_schema)),
        plan=_dataset(store, plan_parts, plan_schema),
    )


def _dataset(store: OutputStore, paths: list[str], schema: pa.Schema) -> ds.Dataset:
    if not paths:
        return ds.dataset(schema.empty_table())
    return ds.dataset(paths, schema=schema, filesystem=store.fs, format="parquet")

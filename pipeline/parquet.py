"""Parquet bytes in and out: the one module that reaches into pyarrow's private reader.

`read_parquet_bytes` opens Arrow's `ParquetReader` (`pyarrow._parquet`) directly: it is
what `pyarrow.parquet.ParquetFile` wraps, without the set-up that is a fifth of the time
of reading a 30-row part. tests/test_structure.py keeps every private import of a
dependency in its one adapter, and fails the day the reader changes.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow._parquet import ParquetReader

from pipeline.schema import DICTIONARY_COLUMNS

# Parquet files at least this big are decoded by Arrow's threads (see read_parquet_bytes).
THREADED_READ_BYTES = 1 << 20


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    dictionary = [c for c in DICTIONARY_COLUMNS if c in table.column_names]
    pq.write_table(table, buf, compression="zstd", use_dictionary=dictionary)
    return buf.getvalue()


def read_parquet_bytes(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """The table in Parquet `data` (only `columns`, if named), read from a copy that Arrow owns.

    Arrow's reader threads may drop the last reference to the buffer after the read
    has returned. Were it the Python `bytes`, that thread would take the GIL to release
    it, and at interpreter exit that aborts the process (SIGABRT, a C++ stack trace
    through PyBuffer::~PyBuffer and take_gil, seen at the end of runs and retries).
    """
    sink = pa.BufferOutputStream()
    sink.write(data)
    # Not read_table (which builds a dataset per call): a 30-row part in 0.3 ms instead of
    # 1.5 ms, which is most of `verify`'s time. Reader threads only pay for big files (a
    # plan of 10^6 units).
    threads = len(data) >= THREADED_READ_BYTES
    reader = ParquetReader()  # what ParquetFile wraps; ParquetFile's own set-up is a fifth of the time
    reader.open(pa.BufferReader(sink.getvalue()))
    if columns is None:
        return reader.read_all(use_threads=threads)
    # Leaf columns, a top-level one as [name]: looking names up here is cheaper than
    # `column_name_idx`, which goes through the whole schema for each name.
    paths = reader.column_paths
    indices = []
    for name in columns:
        try:
            indices.append(paths.index([name]))
        except ValueError:
            raise pa.ArrowInvalid(f"no top-level column {name!r} in the Parquet data") from None
    return reader.read_all(column_indices=indices, use_threads=threads)

"""bulkscribe: transcribe large audio collections with faster-whisper on Ray into resumable Parquet.

The data flow, in the order the code runs it, one concept a module
(tests/test_structure.py holds the order):

- Planning, on the driver: `inputs` (expand URLs, globs and manifests into units, with a
  guess of their audio from their size) → `windows` (split long files, cut at silence; a
  remote file's length from its header by `durations`) → `channels` (a unit per channel
  of a stereo call, with `--channels split`) → `plan` (shards).
- Running: `job` (plan or resume, then run the pending shards; `resume` says whether a
  folder may be continued and with which options) starts or joins Ray (`ray_session`),
  hands the shards to an elastic pool of actors (`dispatch`) and shows a `progress` bar.
- On each actor: `actor` (one shard) → `units` (decode ahead with `audio`; transcribe
  with `transcriber`, several units at once, their decoder calls batched by `streams`,
  on the model `engine` loads, the one module that imports faster-whisper; judge with
  `quality`) → `commit` (check the rows with `shardcheck`, stage the parts, create the
  marker, publish the parts).
- The output folder: `store` (its layout; atomic, create-only and conditional writes,
  through `localdisk` and `listing`; Parquet bytes by `parquet`), `ledger` (job, plan,
  runs), `publish` (staged and published parts), `markers` (commit markers), `index`
  (the marker index), `lease` (one writer per folder). At a run's end `compact` copies
  committed parts into few big files for the query views.
- Reading back: `report` (summaries), `verify`, `query`, `search`, `export`.
- Around them: `schema` (every column, as typed rows), `records` (`job.json`, markers
  and run records, typed), `config` (options, plain data), `retry` (storage back-off),
  `faults` (fault-injection points the reliability tests switch on by environment; inert
  otherwise), `models` (resolve and verify models), `languages` (which model takes which
  language), `tune` (measure the node, keep its profile), `submit` (Ray Jobs), `cli`
  (each command) with `arguments` (parsing).

`import pipeline` is light (no pyarrow, no Ray); the names below load on first use.
"""

from pipeline.config import ActorOptions, JobSpec, WhisperOptions

__version__ = "0.1.0"

_LAZY = {
    "open_output": "pipeline.query",
    "Output": "pipeline.query",
    "SEGMENTS_SCHEMA": "pipeline.schema",
    "FILES_SCHEMA": "pipeline.schema",
}


def run(spec: JobSpec):
    """Run `spec`; see `pipeline.job.run`."""
    from pipeline.job import run as _run

    return _run(spec)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = ["run", "open_output", "Output", "JobSpec", "WhisperOptions", "ActorOptions", "SEGMENTS_SCHEMA", "FILES_SCHEMA", "__version__"]

"""bulkscribe: transcribe large audio collections with faster-whisper on Ray into resumable Parquet.

Data flow, one module each: inputs → plan (→ windows) → dispatch → actor → units (audio
decode → transcriber, several units at once through streams → rows of schema) → commit (parts, then marker, through store) →
report, query, search, export, verify. `job` orchestrates (`pipeline.run` calls it); `ray_session` starts or joins Ray;
`languages` says which model takes which language (files in other languages routed or flagged).

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

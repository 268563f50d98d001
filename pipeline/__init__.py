"""bulkscribe: transcribe large audio collections with faster-whisper on Ray into resumable Parquet.

Data flow, one module each: inputs → plan → audio (decode) → transcriber → actor
(write, commit through store) → run (orchestration) → report.
"""

from pipeline.config import ActorOptions, JobSpec, WhisperOptions
from pipeline.query import Output, open_output
from pipeline.schema import FILES_SCHEMA, SEGMENTS_SCHEMA

__version__ = "0.1.0"


def run(spec: JobSpec):
    """Run `spec`; see `pipeline.run.run`. Imported lazily so that `import pipeline` stays light."""
    from pipeline.run import run as _run

    return _run(spec)


__all__ = ["run", "open_output", "Output", "JobSpec", "WhisperOptions", "ActorOptions", "SEGMENTS_SCHEMA", "FILES_SCHEMA", "__version__"]

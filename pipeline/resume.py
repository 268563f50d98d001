"""Whether a run may continue an output folder, and with which options: one folder
holds one set of decoding options (its job.json's fingerprint); a rerun that names none
takes the folder's own."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pipeline.config import JobSpec, WhisperOptions, fingerprint
from pipeline.records import JobRecord

logger = logging.getLogger(__name__)


class JobMismatchError(ValueError):
    """The output folder holds a job whose transcripts would differ from this one's."""


def folder_options(job: JobRecord) -> WhisperOptions:
    """The decoding options the folder's transcripts were made with."""
    fields = dict(job.fingerprint_fields)
    fields.pop("model_sha256", None)
    fields.pop("route_model_sha256", None)
    fields.setdefault("other_languages", "flag")  # what folders made before the option did
    unknown = set(fields) - {f.name for f in dataclasses.fields(WhisperOptions)}
    if unknown:
        raise JobMismatchError(
            f"{job.output or 'the output folder'} was transcribed by another version of bulkscribe (options "
            f"{', '.join(sorted(unknown))} no longer exist); run the job again into a new --output"
        )
    return WhisperOptions(**fields)  # it makes the temperature list a tuple again


def with_folder_options(spec: JobSpec, job: JobRecord | None) -> JobSpec:
    """`spec` with the decoding options it leaves open taken from the folder's job."""
    if job is None or spec.whisper_given is None:
        return spec
    try:
        folder = folder_options(job)
    except JobMismatchError:
        return spec  # `check_fingerprint` refuses the folder and says why
    follow = {f.name: getattr(folder, f.name) for f in dataclasses.fields(WhisperOptions)
              if f.name not in spec.whisper_given}
    changed = [f"{k}={v!r}" for k, v in follow.items() if getattr(spec.whisper, k) != v]
    if changed:
        logger.info("options not given follow the folder's job: %s", ", ".join(changed))
    return dataclasses.replace(spec, whisper=dataclasses.replace(spec.whisper, **follow), whisper_given=None)


def check_fingerprint(job: JobRecord, fields: dict[str, Any]) -> None:
    """Refuse to resume into a folder whose transcripts were made differently."""
    if job.fingerprint == fingerprint(fields):
        return
    old = job.fingerprint_fields
    diffs = [f"{k}: {old.get(k)!r} in the folder, {v!r} now" for k, v in fields.items() if old.get(k) != v]
    raise JobMismatchError(
        f"{job.output or 'the output folder'} was transcribed with other options, and one folder "
        f"holds one set of options. Differences: {'; '.join(diffs) or 'unknown'}. "
        "Use the folder's options again, or another --output."
    )

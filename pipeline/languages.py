"""Which model transcribes which language: a language the model cannot take is refused,
and with an English-only model, files found in another language are routed to the
language-check model or flagged (`WhisperOptions.other_languages`)."""

from __future__ import annotations

import dataclasses
import logging

from pipeline import models
from pipeline.config import JobSpec, WhisperOptions
from pipeline.records import JobRecord

logger = logging.getLogger(__name__)


def check_language(options: WhisperOptions, model: models.ResolvedModel) -> None:
    """Refuse a language the model cannot transcribe, before anything is written."""
    if options.language is None:
        return
    from pipeline.engine import language_codes

    if options.language not in language_codes():
        raise ValueError(f"unknown language code {options.language!r}; Whisper's codes are "
                         f"{', '.join(sorted(language_codes()))}")
    if options.language != "en" and models.is_multilingual(model.path) is False:
        raise ValueError(f"{model.name} is an English-only model: it cannot transcribe language {options.language!r} "
                         "(use --model base, or leave out --language)")


def settle_other_languages(spec: JobSpec, model: models.ResolvedModel, job: JobRecord | None) -> JobSpec:
    """`spec` with `other_languages` as this job will apply it.

    Routing needs an English-only main model, no forced `--language`, and the
    language-check model installed; without them there is nothing to route, and the
    option is "flag". A new folder asking for routing by default, whose language model is
    not installed, flags instead (with the install command, once: `language_check_model`);
    a folder that routes, or `--other-languages route` given, refuses to go on without it.
    """
    whisper = spec.whisper
    if whisper.other_languages != "route":
        return spec
    if (whisper.language is not None or spec.language_check is None
            or models.is_multilingual(model.path) is not False):
        return dataclasses.replace(spec, whisper=dataclasses.replace(whisper, other_languages="flag"))
    try:
        models.resolve(spec.language_check)
    except models.ModelError as exc:
        asked = job is not None or (spec.whisper_given is not None and "other_languages" in spec.whisper_given)
        if asked:
            raise models.ModelError(
                f"files in other languages are routed to {spec.language_check} in this job, which is not "
                f"installed: {exc} (or --other-languages flag, into a new --output)") from None
        return dataclasses.replace(spec, whisper=dataclasses.replace(whisper, other_languages="flag"))
    return spec


def route_sha256(spec: JobSpec) -> str | None:
    """The sha256 of the model files in other languages go to, if the job routes them."""
    if spec.whisper.other_languages != "route":
        return None
    return models.resolve(spec.language_check).sha256


def language_check_model(spec: JobSpec, model: models.ResolvedModel, *, say_why: bool = True) -> str | None:
    """The model that names the language of doubtful transcripts, if this job needs one
    (an English-only model) and it is installed; else None, and why (with the install
    command) when `say_why`, else in one line at debug level."""
    if spec.language_check is None or models.is_multilingual(model.path) is not False:
        return None
    try:
        models.resolve(spec.language_check)
    except models.ModelError as exc:
        if say_why:
            logger.info("files in other languages will be neither transcribed in their own language nor "
                        "flagged language_mismatch: %s", exc)
        else:
            logger.debug("no language check: %s is not installed", spec.language_check)
        return None
    return spec.language_check

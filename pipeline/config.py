"""The job's options, as frozen dataclasses validated when they are built.

A bad option fails here, on the driver, before any Ray worker starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

COMPUTE_TYPES = ("int8", "int8_float32", "int16", "float32", "default", "auto")
TASKS = ("transcribe", "translate")
OTHER_LANGUAGES = ("route", "flag")
CHANNELS = ("mix", "split")
MIN_WINDOW_S = 60.0
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Streams an actor transcribes at once (bench/README.md, "Batching across files").
DEFAULT_BATCH_SIZE = 8
MAX_BATCH_SIZE = 64


@dataclass(frozen=True)
class WhisperOptions:
    """Everything that changes the transcript; their hash is the job fingerprint.

    A unit all of whose segments have a no_speech_prob at or above
    `unit_no_speech_threshold` AND low decoder confidence (an avg_logprob below
    `unit_logprob_threshold`, or a temperature fallback) is recorded as `no_speech`
    with no segment rows: Whisper invents short phrases ("Mm-hmm.", "Woohoo!") over
    music and noise. Both signals are needed, as in Whisper's own per-window rule:
    tiny.en gave clear LibriVox speech no_speech_prob up to 0.86, but decoded it at
    temperature 0 with avg_logprob above -0.6, while the inventions measured here had
    no_speech_prob 0.55-0.61 with avg_logprob -0.9 to -1.4 or a fallback to T >= 0.4.
    """

    model: str = "tiny.en"
    compute_type: str = "int8"
    # Beam 3, not faster-whisper's 5: about 1.2x faster (an hour of long-form speech in
    # 168.7 s against 201.1 s), and its WER was no higher than beam 5's in any category of
    # the accuracy corpus (bench/accuracy.py; 6.25% against 6.83% in all) nor on the hour
    # (10.37% against 10.55%). Beam 2 lost 1.4 points on the hour, beam 1 25 on short
    # clips. bench/README.md has the figures.
    beam_size: int = 3
    language: str | None = None
    task: str = "transcribe"
    # Silero VAD before decoding (faster-whisper's vad_filter). Off by default: VAD must
    # not decide what counts as speech, and on 11.7 min of read speech it raised the WER
    # from 6.3% to 9.0% at about the same speed.
    vad: bool = False
    word_timestamps: bool = False
    temperature: tuple[float, ...] = DEFAULT_TEMPERATURES
    unit_no_speech_threshold: float = 0.5
    unit_logprob_threshold: float = -0.7
    # What becomes of a file an English-only model finds in another language (the
    # language-check model names it: `JobSpec.language_check`): "route", transcribed
    # again by that multilingual model in its own language (what `--model` of it would
    # give the file); "flag", kept as the English model wrote it, flagged
    # language_mismatch. Folders made before this option existed are "flag".
    other_languages: str = "route"
    # "mix": every file mixed down to mono (what Whisper itself does); "split": each
    # channel of a multi-channel file is a unit of its own (`pipeline.channels`: a call
    # recorder's agent and customer), a channel that repeats channel 0 (dual mono)
    # transcribed once. Left out of the fingerprint when "mix", as folders made before
    # the option existed mixed.
    channels: str = "mix"

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a name or a folder, got an empty string")
        if self.compute_type not in COMPUTE_TYPES:
            raise ValueError(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}, got {self.compute_type!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.language is not None and not (2 <= len(self.language) <= 3 and self.language.isalpha()):
            raise ValueError(f"language must be a language code such as 'en' or 'de', got {self.language!r}")
        if not self.temperature or any(not 0.0 <= t <= 1.0 for t in self.temperature):
            raise ValueError(f"temperature must be one or more values in [0, 1], got {self.temperature!r}")
        if not 0.0 < self.unit_no_speech_threshold <= 1.0:
            raise ValueError(
                f"unit_no_speech_threshold must be in (0, 1], got {self.unit_no_speech_threshold}"
            )
        if self.other_languages not in OTHER_LANGUAGES:
            raise ValueError(f"other_languages must be one of {', '.join(OTHER_LANGUAGES)}, got {self.other_languages!r}")
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {', '.join(CHANNELS)}, got {self.channels!r}")
        if self.unit_logprob_threshold >= 0:
            raise ValueError(f"unit_logprob_threshold must be < 0, got {self.unit_logprob_threshold}")
        object.__setattr__(self, "temperature", tuple(float(t) for t in self.temperature))


@dataclass(frozen=True)
class ActorOptions:
    """How the work is spread: `threads` CPU threads per actor, `actors` actors in all.
    Neither changes the transcript, so neither is in the job fingerprint.

    `actors=None` means an elastic pool: it starts with one actor per `threads` CPUs the
    Ray cluster offers and grows while shards wait and nodes join (see `pool`). One
    1-thread actor per core is the default: on 2 cores, two 1-thread processes ran
    tiny.en at 57.9x real time against 32.9x for one 2-thread process.
    """

    threads: int = 1
    actors: int | None = None
    # Streams each actor transcribes at once, their decoder calls made together
    # (`pipeline.streams`): DEFAULT_BATCH_SIZE unless given or tuned.
    batch_size: int | None = None
    # On a cluster with neither given: each node's actors take that node's own tuning
    # profile (its threads, at most its actors), and `threads` only where a node has none.
    per_node: bool = False

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.batch_size is not None and not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}")

    @property
    def streams(self) -> int:
        """Units each actor transcribes at once: `batch_size`, else the default."""
        return self.batch_size or DEFAULT_BATCH_SIZE

    def actors_for(self, cpus: float) -> int:
        """Actors to start with on a cluster offering `cpus` CPUs now: as asked, else one
        per `threads` CPUs (at least one: on a cluster with no worker yet, its request is
        what makes an autoscaler launch a node)."""
        return self.actors or max(1, int(cpus // self.threads))

    def pool(self, cpus: float, shards: int, *, nodes_join: bool = True) -> "PoolSize":
        """The actor pool for `shards` shards on a cluster offering `cpus` CPUs now.

        With `actors` set, exactly that many (never more than the shards). Otherwise
        `actors_for(cpus)` to start with, growing up to one actor per shard as nodes join,
        shrinking when the queue runs dry. Where no node can join (`nodes_join=False`: a
        Ray started for the job), the CPUs there are now are all there will be: a fixed
        pool, which does not ask Ray for free CPUs every second.
        """
        shards = max(1, shards)
        initial = min(shards, self.actors_for(cpus))
        if self.actors is not None or not nodes_join:
            return PoolSize(initial, initial, initial)
        return PoolSize(1, initial, shards)


@dataclass(frozen=True)
class PoolSize:
    """Actors: at least `minimum`, `initial` at the start, at most `maximum`."""

    minimum: int
    initial: int
    maximum: int

    @property
    def elastic(self) -> bool:
        return self.minimum != self.maximum


@dataclass(frozen=True)
class JobSpec:
    """One transcription job: what to read, where to write, how to transcribe.

    `window_s`: a local file at least 1.5 windows long is split into windows of about
    this length (cut at silence) that different actors transcribe; None never splits.
    `storage_options` go to fsspec (credentials, endpoints); they are never written to
    the output folder. `shard_audio_s` is the audio each shard aims at; None lets the
    planner choose from the size of the collection. `unit_timeout_s` caps the time of
    one unit (None: a minute plus ten seconds per second of audio).
    `language_check` names a multilingual model that, beside an English-only model,
    names the language of doubtful transcripts so that files in other languages are
    flagged `language_mismatch` (None: no check). It changes flags, not transcripts, so
    it is not in the job fingerprint.
    `whisper_given` names the `whisper` fields the caller chose; the others follow the
    job already in the output folder, if there is one, so that a rerun needs only its
    inputs and output whatever the defaults were when the folder was started (None:
    every field was chosen, and a folder made otherwise is refused).
    `rescan`: list the inputs again on a rerun and plan the files added since; without
    it, a rerun naming the inputs the folder was started with goes by its saved plan.
    """

    inputs: tuple[str, ...]
    output: str
    whisper: WhisperOptions = field(default_factory=WhisperOptions)
    actors: ActorOptions = field(default_factory=ActorOptions)
    address: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    shard_audio_s: float | None = None
    progress: bool | None = None
    unit_timeout_s: float | None = None
    window_s: float | None = 600.0
    language_check: str | None = "base"
    whisper_given: frozenset[str] | None = None
    rescan: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if self.window_s is not None and self.window_s < MIN_WINDOW_S:
            raise ValueError(f"window_s must be at least {MIN_WINDOW_S:.0f} (or None: never split), got {self.window_s}")
        if not self.inputs:
            raise ValueError("at least one input is needed (a folder, a glob, a URL or a manifest file)")
        if not self.output:
            raise ValueError("output must be a folder path or URL")
        if self.unit_timeout_s is not None and self.unit_timeout_s <= 0:
            raise ValueError(f"unit_timeout_s must be > 0, got {self.unit_timeout_s}")
        if self.shard_audio_s is not None and self.shard_audio_s <= 0:
            raise ValueError(f"shard_audio_s must be > 0, got {self.shard_audio_s}")

    def public_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data, without storage options (they may hold secrets)."""
        data = dataclasses.asdict(self)
        data.pop("storage_options")
        data.pop("whisper_given")
        data.pop("rescan")  # a choice of one run, not of the job
        data["whisper"]["temperature"] = list(self.whisper.temperature)
        data["inputs"] = list(self.inputs)
        return data


# Per-unit time limit unless the job sets one: a minute, plus ten seconds per second of
# audio (tiny.en on one thread runs near 20x real time, large models near 1x).
DEFAULT_TIMEOUT_BASE_S = 60.0
DEFAULT_TIMEOUT_PER_AUDIO_S = 10.0


@dataclass(frozen=True)
class WorkerConfig:
    """What every actor needs to transcribe and write shards; built once on the driver
    from the job (`pipeline.job`)."""

    output: str
    whisper: WhisperOptions
    threads: int
    model_name: str
    model_sha256: str
    fingerprint: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    unit_timeout_s: float | None = None
    # A multilingual model that names the language of doubtful transcripts of an
    # English-only model (the `language_mismatch` flag); None: no such check.
    language_check: str | None = None
    # The driver's lease (pipeline.lease): parts are written only while it holds the
    # folder, and every marker records it.
    lease_owner: str | None = None
    # Streams an actor transcribes at once; changes no transcript.
    batch_size: int = DEFAULT_BATCH_SIZE

    def transcribe_budget_s(self, audio_s: float) -> float:
        """Time a unit of `audio_s` seconds may take to transcribe."""
        if self.unit_timeout_s is not None:
            return self.unit_timeout_s
        return DEFAULT_TIMEOUT_BASE_S + DEFAULT_TIMEOUT_PER_AUDIO_S * audio_s


def fingerprint_fields(options: WhisperOptions, model_sha256: str, route_sha256: str | None = None) -> dict[str, Any]:
    """The options that change the transcript, with the model's identity, and with
    routing, the identity of the model files in other languages are routed to.
    `other_languages="flag"` and `channels="mix"` are left out: the fingerprints of
    folders made before those options existed (which flagged, and mixed) stay what they
    were."""
    fields = dataclasses.asdict(options)
    fields["temperature"] = list(options.temperature)
    fields["model_sha256"] = model_sha256
    if options.channels == "mix":
        del fields["channels"]
    if options.other_languages == "flag":
        del fields["other_languages"]
    else:
        fields["route_model_sha256"] = route_sha256
    return fields


def fingerprint(fields: dict[str, Any]) -> str:
    """A short stable hash of `fingerprint_fields`."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

"""Audio in, plain segment dataclasses out, through faster-whisper's own loop (the model
itself is loaded by `pipeline.engine`, the one module that imports faster-whisper).

Everything else talks to `Transcriber.transcribe(audio) -> Transcript` or
`Transcriber.transcribe_many(streams, width)`, so the orchestration can be tested with a
fake and the engine swapped later.

Each input is decoded by faster-whisper's own long-form loop (checked against
faster-whisper 1.2.1): 30 s windows of that input only, each next window starting
where the last decoded timestamp ends, with Whisper's temperature fallback. So a
file's transcript holds only text decoded from its own audio, and it does not depend
on the files transcribed before or after it. `transcribe_many` runs several such loops
at once and makes their decoder calls together, one row a stream (`pipeline.streams`):
CTranslate2 computes each row of a batch as it computes it alone, bit for bit, when no
row is padded (bench/batching.py; tests/test_streams.py), so batching changes no text.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.config import WhisperOptions
from pipeline.engine import SAMPLE_RATE, WINDOW_S, load_model, seed_sampling, stacked
from pipeline.streams import Call, Lockstep, NeedsFallback, Stream, run_streams

# The seed of the temperature fallback's sampling (see `Transcriber.transcribe`).
SAMPLING_SEED = 0
# Whisper's fallback thresholds (faster-whisper's defaults, passed explicitly because
# `Transcriber.transcribe` applies the same rule).
COMPRESSION_RATIO_LIMIT = 2.4
LOGPROB_LIMIT = -1.0
NO_SPEECH_LIMIT = 0.6


class UnitTimeout(Exception):
    """A unit ran past its time limit; raised between two segments."""


@dataclass(frozen=True)
class Word:
    """A word with its timing (seconds into the input) and the decoder's probability."""

    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """One decoded segment, as faster-whisper reports it, times in seconds into the input.

    Attributes:
        avg_logprob: mean log probability of its tokens (Whisper's confidence).
        no_speech_prob: probability of the no-speech token at the start of its window.
        compression_ratio: of its text under zlib; high for repetition loops.
        temperature: the temperature it was decoded at (above 0: a fallback).
    """

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True)
class Transcript:
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    duration_s: float


class Transcriber:
    """One faster-whisper model on the CPU, loaded once and reused for every unit.

    An English-only model cannot tell that a file is not in English; with
    `language_id_path`, a multilingual model (loaded on first use) names the language
    of the files the caller doubts (`languages`) and transcribes those in another
    language (`in_own_language`).

    Args:
        model_path: a CTranslate2 model folder (see `pipeline.models.resolve`).
        options: decoding options.
        cpu_threads: CTranslate2 intra-op threads; match the CPUs Ray gave the actor.
        language_id_path: a multilingual CTranslate2 Whisper folder, used only when the
            main model is English-only.
    """

    def __init__(self, model_path: str, options: WhisperOptions, cpu_threads: int,
                 language_id_path: str | None = None):
        self.options = options
        self._path = model_path
        self._threads = cpu_threads
        # Files decoded again with the temperature fallback, for tests and benchmarks.
        self.resampled = 0
        self._model = load_model(model_path, options.compute_type, cpu_threads)
        self._language_id_path = None if self.multilingual else language_id_path
        self._other: Transcriber | None = None

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    @property
    def checks_language(self) -> bool:
        """True when `languages` can be called: an English-only model with a language model."""
        return self._language_id_path is not None

    def languages(self, audio: np.ndarray) -> dict[str, float]:
        """Language code -> probability for the first 30 s of 16 kHz `audio`."""
        _, _, ranked = self._multilingual().detect_language(audio=audio[: int(WINDOW_S * SAMPLE_RATE)])
        return {code: float(p) for code, p in ranked}

    def in_own_language(self, audio: np.ndarray, deadline: float | None = None) -> Transcript:
        """The transcript of the language-check model, in the language it detects: what a
        job run with that model gives the file."""
        self._multilingual()
        return self._other.transcribe(audio, deadline)

    def _multilingual(self):
        if self._other is None:
            other = Transcriber(self._language_id_path, self.options, self._threads)
            if not other.multilingual:
                raise ValueError(f"{self._language_id_path} is English-only: it cannot identify languages")
            self._other = other
        return self._other._model

    def transcribe(self, audio: np.ndarray, deadline: float | None = None) -> Transcript:
        """Transcribe 16 kHz mono float32 `audio`.

        The result is faster-whisper's own, temperature fallback included, and the same
        whatever this model transcribed before. CTranslate2 samples with a generator of
        its worker thread that is seeded once, when the thread first samples: reseeding
        later changes nothing, so a model that has sampled for one file would sample
        differently for the next. So the first pass decodes at the first temperature
        only (deterministic); if a window of it would have fallen back, the file is
        decoded again with the whole schedule by a model loaded for that file alone.

        Args:
            deadline: a `time.monotonic()` value; past it, UnitTimeout is raised at the
                next segment boundary (a CTranslate2 call itself cannot be interrupted).
        """
        temperatures = self.options.temperature
        if temperatures[0] == 0:
            first = self._decode(self._model, audio, temperatures[:1], deadline)
            if len(temperatures) == 1 or not any(_needs_fallback(s) for s in first.segments):
                return first
        return self._resample(audio, deadline)

    def transcribe_many(self, streams: Iterable[Stream], width: int) -> Iterator[tuple[Stream, Transcript | Exception]]:
        """Transcribe `streams`, up to `width` at once, sharing the decoder's calls.

        Each stream is decoded by faster-whisper's own loop as `transcribe` decodes it,
        with its own windows and prompts: only the decoder's calls are shared, one row a
        stream, and only between calls whose prompts have the same length, so that no
        row is padded (`_run_round`). Yields (stream, transcript or the exception that
        ended it: UnitTimeout, a decoding error) as each stream ends.
        """
        temperatures = self.options.temperature
        # One stream at a time computes its log-mel features (a 10-minute unit's STFT
        # briefly takes about 100 MB): the others wait for their round anyway.
        features = _OneAtATime(self._model.feature_extractor)

        def first_pass(stream: Stream, deadline: float, lockstep: Lockstep, order: int) -> Transcript:
            if temperatures[0] != 0:
                raise NeedsFallback
            view = copy.copy(self._model)
            view.model = _SharedDecoder(self._model.model, lockstep, order)
            view.feature_extractor = features
            return self._decode(view, stream.samples, temperatures[:1], deadline, stop_at_fallback=len(temperatures) > 1)

        def alone(stream: Stream, deadline: float) -> Transcript:
            return self._resample(stream.samples, deadline)

        def run_round(calls: list[Call]) -> None:
            _run_round(self._model.model, calls)

        yield from run_streams(streams, width, first_pass=first_pass, alone=alone, run_round=run_round)

    def _resample(self, audio: np.ndarray, deadline: float | None) -> Transcript:
        seed_sampling(SAMPLING_SEED)
        sampler = load_model(self._path, self.options.compute_type, self._threads)
        self.resampled += 1
        return self._decode(sampler, audio, self.options.temperature, deadline)

    def _decode(self, model, audio: np.ndarray, temperatures: tuple[float, ...], deadline: float | None,
                stop_at_fallback: bool = False) -> Transcript:
        options = self.options
        segments, info = model.transcribe(
            audio,
            language=options.language,
            task=options.task,
            beam_size=options.beam_size,
            temperature=list(temperatures),
            compression_ratio_threshold=COMPRESSION_RATIO_LIMIT,
            log_prob_threshold=LOGPROB_LIMIT,
            no_speech_threshold=NO_SPEECH_LIMIT,
            vad_filter=options.vad,
            word_timestamps=options.word_timestamps,
        )
        # faster-whisper decodes lazily: materialise here so that every error of this
        # unit is raised inside the caller's try block, not later while writing.
        rows = []
        for s in segments:
            _check_deadline(deadline, f"stopped after {s.end:.0f}s of {info.duration:.0f}s of audio")
            rows.append(_segment(s))
            if stop_at_fallback and _needs_fallback(rows[-1]):
                segments.close()
                raise NeedsFallback
        return Transcript(
            segments=_within(rows, float(info.duration)),
            language=info.language,
            language_probability=float(info.language_probability),
            duration_s=float(info.duration),
        )


class _OneAtATime:
    """faster-whisper's feature extractor, called by one thread at a time."""

    def __init__(self, extractor):
        self._extractor = extractor
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._extractor(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._extractor, name)


class _SharedDecoder:
    """A stream's view of the CTranslate2 model: its `generate` calls wait for their round
    (`pipeline.streams.Lockstep`); everything else goes to the model at once. Checked
    against faster-whisper 1.2.1, whose loop calls `generate` with one prompt."""

    def __init__(self, model, lockstep: Lockstep, order: int):
        self._model = model
        self._lockstep = lockstep
        self._order = order

    def generate(self, encoder_output, prompts: list[list[int]], **options):
        if len(prompts) != 1:
            raise ValueError(f"a stream decodes one window a call, got {len(prompts)} prompts")
        prompt = list(prompts[0])
        key = (len(prompt), tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items())))
        return [self._lockstep.call(Call(self._order, key, (encoder_output, prompt, options)))]

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def _run_round(model, calls: list[Call]) -> None:
    """Make a round's decoder calls: one batched `generate` for each group of calls with
    the same options and prompts of the same length (CTranslate2 wants
    <|startoftranscript|> at one position in every row, and a padded row would be
    computed differently). A call that fails in a batch is made again alone, so an error
    belongs to the stream that caused it."""
    groups: dict = {}
    for c in calls:
        groups.setdefault(c.key, []).append(c)
    for group in groups.values():
        options = group[0].args[2]
        try:
            if len(group) == 1:
                encoded = group[0].args[0]
            else:
                encoded = stacked([c.args[0] for c in group])
            for c, result in zip(group, model.generate(encoded, [c.args[1] for c in group], **options)):
                c.result = result
        except (RuntimeError, ValueError) as exc:
            if len(group) == 1:
                group[0].error = exc
                continue
            for c in group:
                try:
                    c.result = model.generate(c.args[0], [c.args[1]], **options)[0]
                except (RuntimeError, ValueError) as alone_exc:
                    c.error = alone_exc


def _needs_fallback(s: "Segment") -> bool:
    """faster-whisper's rule (generate_with_fallback): the window of `s` would be decoded
    again at the next temperature. Every segment carries its window's figures."""
    silent = s.no_speech_prob > NO_SPEECH_LIMIT and s.avg_logprob < LOGPROB_LIMIT
    return (s.compression_ratio > COMPRESSION_RATIO_LIMIT or s.avg_logprob < LOGPROB_LIMIT) and not silent


def _check_deadline(deadline: float | None, message: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise UnitTimeout(f"{message}: time limit reached")


def _within(rows: list[Segment], duration: float) -> tuple[Segment, ...]:
    """Over noise Whisper may emit timestamps past the end of the audio; such segments
    describe nothing that exists. A segment that ends before it starts is given the
    length of its start (never a negative one)."""
    return tuple(
        dataclasses.replace(s, end=max(s.start, min(s.end, duration))) for s in rows if s.start < duration
    )


def _segment(s) -> Segment:
    words = None
    if s.words is not None:
        words = tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in s.words)
    return Segment(
        start=float(s.start),
        end=float(s.end),
        text=s.text.strip(),
        avg_logprob=float(s.avg_logprob),
        no_speech_prob=float(s.no_speech_prob),
        compression_ratio=float(s.compression_ratio),
        temperature=float(s.temperature),
        words=words,
    )



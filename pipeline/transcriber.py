"""The one module that imports faster_whisper: audio in, plain segment dataclasses out.

Everything else talks to `Transcriber.transcribe(audio) -> Transcript`, so the
orchestration can be tested with a fake and the engine swapped later.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from pipeline.config import WhisperOptions

SAMPLING_SEED = 0


class UnitTimeout(Exception):
    """A unit ran past its time limit; raised between two 30 s windows."""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
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

    Args:
        model_path: a CTranslate2 model folder (see `pipeline.models.resolve`).
        options: decoding options.
        cpu_threads: CTranslate2 intra-op threads; match the CPUs Ray gave the actor.
    """

    def __init__(self, model_path: str, options: WhisperOptions, cpu_threads: int):
        from faster_whisper import WhisperModel

        self.options = options
        self._model = WhisperModel(
            model_path,
            device="cpu",
            compute_type=options.compute_type,
            cpu_threads=cpu_threads,
            num_workers=1,
            local_files_only=True,
        )

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, deadline: float | None = None) -> Transcript:
        """Transcribe 16 kHz mono float32 `audio`.

        Args:
            deadline: a `time.monotonic()` value; past it, UnitTimeout is raised at the
                next window boundary (a CTranslate2 call itself cannot be interrupted).
        """
        import ctranslate2

        o = self.options
        # The temperature fallback samples; a fixed seed per unit makes a retry or a rerun
        # give the same transcript as the first attempt.
        ctranslate2.set_random_seed(SAMPLING_SEED)
        segments, info = self._model.transcribe(
            audio,
            language=o.language,
            task=o.task,
            beam_size=o.beam_size,
            temperature=list(o.temperature),
            vad_filter=o.vad,
            word_timestamps=o.word_timestamps,
        )
        # faster-whisper decodes lazily: materialise here so that every error of this
        # unit is raised inside the caller's try block, not later while writing.
        rows = []
        for s in segments:
            if deadline is not None and time.monotonic() > deadline:
                raise UnitTimeout(f"stopped after {s.end:.0f}s of {info.duration:.0f}s of audio: time limit reached")
            rows.append(_segment(s))
        # Over noise Whisper may emit timestamps past the end of the audio; such
        # segments describe nothing that exists.
        duration = float(info.duration)
        rows = tuple(
            dataclasses.replace(s, end=min(s.end, duration)) for s in rows if s.start < duration
        )
        return Transcript(
            segments=rows,
            language=info.language,
            language_probability=float(info.language_probability),
            duration_s=float(info.duration),
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


def download_model(name: str, cache_dir: str) -> str:
    """Fetch a faster-whisper model by name from its hub; returns the local folder."""
    from faster_whisper.utils import download_model as _download

    return _download(name, cache_dir=cache_dir)

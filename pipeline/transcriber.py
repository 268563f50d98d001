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

SAMPLE_RATE = 16_000

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

    Two engines (`WhisperOptions.engine`):

    - `batched` (the default): Silero VAD finds the speech in every input; the speech
      regions of several inputs are packed, in order, into 30 s windows (Whisper pads
      every input to 30 s, so a 5 s clip alone pays for 30 s of encoder); the windows
      are encoded and decoded `batch_size` at a time; words and segments are mapped
      back to their input and its own time line. A guard re-decodes, alone and with
      the sequential engine's temperature fallback, any input's share of a window
      where the fast path looks wrong: a speech region no segment covers (a dropped
      stretch), a repetition loop (compression ratio over 2.4) or a low-confidence
      window (avg_logprob under -1).
    - `sequential`: faster-whisper's own long-form loop, one input at a time.

    Args:
        model_path: a CTranslate2 model folder (see `pipeline.models.resolve`).
        options: decoding options.
        cpu_threads: CTranslate2 intra-op threads; match the CPUs Ray gave the actor.
        batch_size: windows encoded and decoded together by the batched engine.
    """

    def __init__(self, model_path: str, options: WhisperOptions, cpu_threads: int, batch_size: int = 8):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.options = options
        self.batch_size = batch_size
        self._model = WhisperModel(
            model_path,
            device="cpu",
            compute_type=options.compute_type,
            cpu_threads=cpu_threads,
            num_workers=1,
            local_files_only=True,
        )
        self._pipeline = BatchedInferencePipeline(self._model)
        self.fallbacks = 0  # inputs' window shares re-decoded by the guard, for tests and benchmarks

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def transcribe(self, audio: np.ndarray, deadline: float | None = None) -> Transcript:
        """Transcribe 16 kHz mono float32 `audio`.

        Args:
            deadline: a `time.monotonic()` value; past it, UnitTimeout is raised at the
                next window boundary (a CTranslate2 call itself cannot be interrupted).
        """
        return self.transcribe_many([audio], deadline)[0]

    def transcribe_many(self, audios: list[np.ndarray], deadline: float | None = None) -> list[Transcript]:
        """Transcribe several inputs together; one Transcript per input, in order."""
        import ctranslate2

        # The temperature fallback samples; a fixed seed makes a retry or a rerun give the
        # same transcript as the first attempt.
        ctranslate2.set_random_seed(SAMPLING_SEED)
        if self.options.engine == "sequential":
            return [self._sequential(a, deadline) for a in audios]
        return _BatchedRun(self, audios, deadline).run()

    def _sequential(self, audio: np.ndarray, deadline: float | None) -> Transcript:
        o = self.options
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
            _check_deadline(deadline, f"stopped after {s.end:.0f}s of {info.duration:.0f}s of audio")
            rows.append(_segment(s))
        return Transcript(
            segments=_within(rows, float(info.duration)),
            language=info.language,
            language_probability=float(info.language_probability),
            duration_s=float(info.duration),
        )


def speech_regions(audio: np.ndarray, min_silence_ms: int = 160, pad_ms: int = 400) -> list[tuple[int, int]]:
    """Silero VAD's speech regions of 16 kHz `audio`, as (start, end) sample offsets.

    The defaults are BatchedInferencePipeline's: regions of at most 30 s, split at
    silences of 160 ms, padded by 400 ms.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(audio) == 0:
        return []
    vad = VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms)
    return [(int(r["start"]), int(r["end"])) for r in get_speech_timestamps(audio, vad)]


# Whisper's window, and Whisper's own fallback thresholds.
WINDOW_S = 30.0
COMPRESSION_RATIO_LIMIT = 2.4
LOGPROB_LIMIT = -1.0
NO_SPEECH_LIMIT = 0.6
# Inside one VAD speech region pauses are under 160 ms (plus 400 ms of padding at its
# ends), so a stretch this long that no segment covers is speech the decoder skipped.
SKIPPED_S = 1.5
# Read speech runs at 12-16 characters a second, and a window holds speech with its
# pauses cut out: a long segment with far fewer characters hides skipped speech.
SPARSE_SEGMENT_S = 4.0
SPARSE_CHARS_PER_S = 4.0
# Batched rounds before skipped stretches go to the sequential decoder. Measured on
# 11 min of read speech (tiny.en, one thread): 3 rounds gave 30.6x real time and a WER of
# 12.6%; 1 round (skipped stretches straight to the sequential decoder) 26.2x and 11.2%;
# plain faster-whisper 21.6x (two threads) and 11.5%.
MAX_ROUNDS = 1

Span = tuple[int, int, int]  # (input index, start sample, end sample)


@dataclass(frozen=True)
class _Piece:
    """One span of one input, placed in a packed window."""

    item: int
    window_start: float  # seconds into the window
    window_end: float
    source_start: float  # seconds into the input

    @property
    def source_end(self) -> float:
        return self.source_start + self.window_end - self.window_start

    def to_source(self, t: float) -> float:
        return self.source_start + min(max(t, self.window_start), self.window_end) - self.window_start


@dataclass
class _Window:
    samples: list[np.ndarray]
    pieces: list[_Piece]
    language: str

    @property
    def duration(self) -> float:
        return sum(len(s) for s in self.samples) / SAMPLE_RATE


class _BatchedRun:
    """One `transcribe_many` call of the batched engine."""

    def __init__(self, transcriber: Transcriber, audios: list[np.ndarray], deadline: float | None):
        self.t = transcriber
        self.model = transcriber._model
        self.audios = audios
        self.deadline = deadline
        self.segments: list[list[Segment]] = [[] for _ in audios]
        self.languages: list[tuple[str, float]] = [("en", 1.0)] * len(audios)

    def run(self) -> list[Transcript]:
        o = self.t.options
        regions = [speech_regions(a) for a in self.audios]
        if o.language is not None or not self.t.multilingual:
            language = o.language if self.t.multilingual else "en"
            self.languages = [(language, 1.0)] * len(self.audios)
        else:
            # Inputs of different languages must not share a window: detect each first.
            for i, a in enumerate(self.audios):
                if regions[i]:
                    speech = np.concatenate([a[s:e] for s, e in regions[i]])[: int(WINDOW_S * SAMPLE_RATE)]
                    language, probability, _ = self.model.detect_language(audio=speech)
                    self.languages[i] = (language, float(probability))
        spans = [(item, start, end) for item, found in enumerate(regions) for start, end in found]
        for _ in range(MAX_ROUNDS):
            if not spans:
                break
            spans = self._round(self._pack(spans))
        for item, start, end in spans:
            # Still skipped after every round: decode those stretches one by one.
            piece = _Piece(item, 0.0, (end - start) / SAMPLE_RATE, start / SAMPLE_RATE)
            window = _Window([self.audios[item][start:end]], [piece], self.languages[item][0])
            self.segments[item].extend(self._fallback(window, item))
        results = []
        for i, a in enumerate(self.audios):
            duration = len(a) / SAMPLE_RATE
            rows = sorted(self.segments[i], key=lambda s: (s.start, s.end))
            language, probability = self.languages[i]
            results.append(Transcript(_within(rows, duration), language, probability, duration))
        return results

    def _pack(self, spans: list[Span]) -> list[_Window]:
        """`spans`, in order, packed greedily into windows of at most 30 s; an input
        shares a window only with inputs of its language."""
        limit = int(WINDOW_S * SAMPLE_RATE)
        windows: list[_Window] = []
        current: _Window | None = None
        filled = 0
        for item, start, end in spans:
            language = self.languages[item][0]
            n = end - start
            if current is None or filled + n > limit or current.language != language:
                current, filled = _Window([], [], language), 0
                windows.append(current)
            current.samples.append(self.audios[item][start:end])
            current.pieces.append(_Piece(item, filled / SAMPLE_RATE, (filled + n) / SAMPLE_RATE, start / SAMPLE_RATE))
            filled += n
        return windows

    def _round(self, windows: list[_Window]) -> list[Span]:
        """Decode `windows` in batches; return the spans the decoder skipped.

        A batched decoder sees each window once: where it stops early or jumps ahead,
        speech is silently lost (faster-whisper's sequential loop would seek and decode
        again from the last timestamp). The stretches of a span that no segment covers
        come back, to be packed into new windows and decoded again.
        """
        o = self.t.options
        skipped: list[Span] = []
        for language in sorted({w.language for w in windows}):
            group = [w for w in windows if w.language == language]
            # Windows shared by several inputs need word timings to split a segment between them.
            for shared in (False, True):
                batch = [w for w in group if (len({p.item for p in w.pieces}) > 1) == shared]
                for i in range(0, len(batch), self.t.batch_size):
                    _check_deadline(self.deadline, "stopped between two batches of windows")
                    skipped += self._decode(batch[i : i + self.t.batch_size], language, shared or o.word_timestamps)
        return sorted(skipped)

    def _decode(self, windows: list[_Window], language: str, words: bool) -> list[Span]:
        from faster_whisper.tokenizer import Tokenizer

        o = self.t.options
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task=o.task, language=language)
        # Pad each window with silence before the log-mel, as the sequential loop does:
        # BatchedInferencePipeline pads the features with zeros instead, which is not
        # silence to the model, and it then stopped early or stretched a segment over
        # skipped speech twice as often (10.7% WER against 11.2%, and 11% faster, on
        # 11 min of read speech).
        size = int(WINDOW_S * SAMPLE_RATE)
        features = np.stack([
            self.model.feature_extractor(np.pad(np.concatenate(w.samples), (0, size - sum(map(len, w.samples)))))
            [..., : self.model.feature_extractor.nb_max_frames]
            for w in windows
        ])
        metadata = [{"offset": 0.0, "duration": w.duration, "segments": []} for w in windows]
        pipeline = self.t._pipeline
        pipeline.last_speech_timestamp = 0.0
        outputs = pipeline.forward(features, tokenizer, metadata, _batched_options(tokenizer, o, words))
        skipped: list[Span] = []
        for window, output in zip(windows, outputs):
            for item, segments in self._split(window, output, words).items():
                if _unreliable(segments):
                    segments = self._fallback(window, item)
                else:
                    skipped += [
                        (item, round(a * SAMPLE_RATE), round(b * SAMPLE_RATE))
                        for p in window.pieces if p.item == item
                        for a, b in _gaps(p, segments) if b - a >= SKIPPED_S
                    ]
                self.segments[item].extend(segments)
        return skipped

    def _split(self, window: _Window, output: list[dict], words: bool) -> dict[int, list[Segment]]:
        """The window's segments, cut between inputs and moved to each input's time line."""
        by_item: dict[int, list[Segment]] = {p.item: [] for p in window.pieces}
        for s in output:
            common = dict(
                avg_logprob=float(s["avg_logprob"]),
                no_speech_prob=float(s["no_speech_prob"]),
                compression_ratio=float(s["compression_ratio"]),
                temperature=0.0,
            )
            if words and s.get("words"):
                runs: list[tuple[int, list[Word]]] = []
                for w in s["words"]:
                    piece = _piece_at(window.pieces, (w["start"] + w["end"]) / 2)
                    word = Word(piece.to_source(w["start"]), piece.to_source(w["end"]), w["word"], float(w["probability"]))
                    if runs and runs[-1][0] == piece.item:
                        runs[-1][1].append(word)
                    else:
                        runs.append((piece.item, [word]))
                for item, ws in runs:
                    text = "".join(w.word for w in ws).strip()
                    if text:
                        keep = tuple(ws) if self.t.options.word_timestamps else None
                        by_item[item].append(Segment(ws[0].start, ws[-1].end, text, words=keep, **common))
            else:
                text = s["text"].strip()
                if not text:
                    continue
                item = _piece_at(window.pieces, (s["start"] + s["end"]) / 2).item
                own = [p for p in window.pieces if p.item == item]
                start = _piece_at(own, s["start"]).to_source(s["start"])
                end = _piece_at(own, s["end"]).to_source(s["end"])
                by_item[item].append(Segment(start, max(start, end), text, **common))
        return by_item

    def _fallback(self, window: _Window, item: int) -> list[Segment]:
        """Decode this input's share of `window` alone, sequentially, with Whisper's
        temperature fallback."""
        o = self.t.options
        joined, own, at = [], [], 0.0
        for p, samples in zip(window.pieces, window.samples):
            if p.item == item:
                length = len(samples) / SAMPLE_RATE
                own.append(_Piece(item, at, at + length, p.source_start))
                joined.append(samples)
                at += length
        self.t.fallbacks += 1
        segments, _ = self.model.transcribe(
            np.concatenate(joined),
            language=window.language,
            task=o.task,
            beam_size=o.beam_size,
            temperature=list(o.temperature),
            condition_on_previous_text=False,
            vad_filter=False,
            word_timestamps=o.word_timestamps,
        )
        rows = []
        for s in segments:
            seg = _segment(s)
            words = None
            if seg.words is not None:
                words = tuple(
                    Word(p.to_source(w.start), p.to_source(w.end), w.word, w.probability)
                    for w in seg.words
                    for p in [_piece_at(own, (w.start + w.end) / 2)]
                )
            start = _piece_at(own, seg.start).to_source(seg.start)
            end = _piece_at(own, seg.end).to_source(seg.end)
            rows.append(dataclasses.replace(seg, start=start, end=max(start, end), words=words))
        return rows


def _unreliable(segments: list[Segment]) -> bool:
    """A repetition loop or a low-confidence decode (Whisper's own fallback rule), or a
    segment whose timestamps stretch a few words over much speech (the rest was skipped)."""
    return any(
        s.compression_ratio > COMPRESSION_RATIO_LIMIT
        or (s.avg_logprob < LOGPROB_LIMIT and s.no_speech_prob < NO_SPEECH_LIMIT)
        or (s.end - s.start >= SPARSE_SEGMENT_S and len(s.text) < SPARSE_CHARS_PER_S * (s.end - s.start))
        for s in segments
    )


def _gaps(piece: _Piece, segments: list[Segment]) -> list[tuple[float, float]]:
    """The stretches of `piece` (source seconds) that no segment covers."""
    gaps, at = [], piece.source_start
    for s in sorted(segments, key=lambda s: s.start):
        if s.end <= at or s.start >= piece.source_end:
            continue
        if s.start > at:
            gaps.append((at, s.start))
        at = max(at, s.end)
    if piece.source_end > at:
        gaps.append((at, piece.source_end))
    return gaps


def _piece_at(pieces: list[_Piece], t: float) -> _Piece:
    """The piece holding window time `t`, else the nearest one."""
    for p in pieces:
        if p.window_start <= t < p.window_end:
            return p
    return min(pieces, key=lambda p: min(abs(t - p.window_start), abs(t - p.window_end)))


def _batched_options(tokenizer, o: WhisperOptions, words: bool):
    from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

    return TranscriptionOptions(
        beam_size=o.beam_size,
        best_of=5,
        patience=1,
        length_penalty=1,
        repetition_penalty=1,
        no_repeat_ngram_size=0,
        log_prob_threshold=LOGPROB_LIMIT,
        no_speech_threshold=NO_SPEECH_LIMIT,
        compression_ratio_threshold=COMPRESSION_RATIO_LIMIT,
        condition_on_previous_text=False,
        prompt_reset_on_temperature=0.5,
        temperatures=[o.temperature[0]],
        initial_prompt=None,
        prefix=None,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        without_timestamps=False,
        max_initial_timestamp=0.0,
        word_timestamps=words,
        prepend_punctuations="\"'“¿([{-",
        append_punctuations="\"'.。,，!！?？:：”)]}、",
        multilingual=False,
        max_new_tokens=None,
        clip_timestamps=[],
        hallucination_silence_threshold=None,
        hotwords=None,
    )


def _check_deadline(deadline: float | None, message: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise UnitTimeout(f"{message}: time limit reached")


def _within(rows: list[Segment], duration: float) -> tuple[Segment, ...]:
    """Over noise Whisper may emit timestamps past the end of the audio; such segments
    describe nothing that exists."""
    return tuple(dataclasses.replace(s, end=min(s.end, duration)) for s in rows if s.start < duration)


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

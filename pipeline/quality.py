"""What a transcript says about itself: whether it is speech, and why it may be doubtful.

Two decisions per unit, both from the decoder's own signals, never from VAD:

- `is_no_speech`: the unit has no segment, or every segment is likely not speech.
- `flags`: reasons to doubt an `ok` transcript, kept in the `files` row (`flags`) so
  that doubtful files can be found and run again (README: "Doubtful transcripts").
"""

from __future__ import annotations

import re
import zlib
from typing import Callable, Sequence

from pipeline.config import WhisperOptions
from pipeline.transcriber import COMPRESSION_RATIO_LIMIT, LOGPROB_LIMIT, Segment, Transcript

# The flags, in the order they are listed.
REPETITION = "repetition"
LOW_CONFIDENCE = "low_confidence"
LANGUAGE_MISMATCH = "language_mismatch"
FLAGS = (REPETITION, LOW_CONFIDENCE, LANGUAGE_MISMATCH)

# Whisper's own per-window thresholds (COMPRESSION_RATIO_LIMIT, LOGPROB_LIMIT) are
# applied to the whole unit here: a loop spread over many short segments never trips a
# per-segment compression ratio.
# Below this many characters zlib's header dominates and every ratio is low.
MIN_COMPRESSIBLE_CHARS = 60
# The compression ratio is taken over every stretch of this many characters (about the
# text of one 30 s window, the span Whisper's own rule looks at), half overlapping: a
# loop is local, while the whole text of a long recording compresses well wherever it
# comes back to what it said before. Over whole texts, every file of an hour of read
# speech that returns to its passages (bench/throughput.py's long corpus) measured
# 3.2-3.5 and was flagged; stretched over 500 characters, at most 2.07.
LOOP_SPAN_CHARS = 500
# A phrase said 3 times in a row, covering 8 words or more ("the" x 8, a 4-word phrase
# x 2 is not enough, x 3 is), is a loop; "no, no, no" is speech.
MIN_REPEATS = 3
MIN_LOOP_WORDS = 8
MAX_PHRASE_WORDS = 12
# An English-only model on other languages still writes English, with less confidence
# in it, so a multilingual model names the language of its doubtful units: those with a
# flag, or a duration-weighted avg_logprob below DOUBT_LOGPROB. Measured with tiny.en on
# the accuracy corpus (bench/accuracy.py): Russian and Chinese speech came out at -0.74
# to -2.1, English read speech at -0.19 to -0.62 (most above -0.5), so few English units
# pay for the check (about 1.6 s with `base` on one thread). `base` gave every English
# item of the corpus (accented, 8 kHz, -30 dB, single words) "en" as its first language
# and p(en) under 0.01 to every Russian and Chinese one.
DOUBT_LOGPROB = -0.5
FOREIGN_EN_PROBABILITY = 0.1


def is_no_speech(segments: Sequence[Segment], options: WhisperOptions) -> bool:
    """True when every segment is likely not speech (see `WhisperOptions` for the rule)."""
    return all(
        s.no_speech_prob >= options.unit_no_speech_threshold
        and (s.avg_logprob < options.unit_logprob_threshold or s.temperature > 0)
        for s in segments
    )


def flags(transcript: Transcript, *, languages: Callable[[], dict[str, float]] | None = None) -> tuple[str, ...]:
    """The reasons to doubt `transcript`, in the order of `FLAGS`.

    Args:
        languages: for a transcript of an English-only model, a callable that names the
            languages of its audio (language code -> probability); called only for a
            doubtful transcript. None: no language check.
    """
    segments = transcript.segments
    if not segments:
        return ()
    found = []
    if is_repetitive([s.text for s in segments]):
        found.append(REPETITION)
    confidence = mean_logprob(segments)
    if confidence < LOGPROB_LIMIT:
        found.append(LOW_CONFIDENCE)
    if languages is not None and (found or confidence < DOUBT_LOGPROB):
        if languages().get("en", 0.0) < FOREIGN_EN_PROBABILITY:
            found.append(LANGUAGE_MISMATCH)
    return tuple(found)


def mean_logprob(segments: Sequence[Segment]) -> float:
    """avg_logprob weighted by segment duration (a 0.1 s "Mm." weighs little)."""
    weights = [max(s.end - s.start, 0.1) for s in segments]
    return sum(w * s.avg_logprob for w, s in zip(weights, segments)) / sum(weights)


def is_repetitive(texts: Sequence[str]) -> bool:
    """A decoding loop: a stretch of the text (`LOOP_SPAN_CHARS`) compresses like a loop, or one phrase of up to
    `MAX_PHRASE_WORDS` words comes back to back `MIN_REPEATS` times or more, over at
    least `MIN_LOOP_WORDS` words."""
    text = " ".join(texts)
    step = LOOP_SPAN_CHARS // 2
    for start in range(0, max(len(text) - LOOP_SPAN_CHARS, 0) + step, step):
        data = text[start : start + LOOP_SPAN_CHARS].encode("utf-8")
        if len(data) >= MIN_COMPRESSIBLE_CHARS and len(data) / len(zlib.compress(data)) > COMPRESSION_RATIO_LIMIT:
            return True
    words = re.findall(r"\w+", text.lower())
    for n in range(1, MAX_PHRASE_WORDS + 1):
        for offset in range(n):
            run = 1
            for i in range(offset + n, len(words) - n + 1, n):
                run = run + 1 if words[i : i + n] == words[i - n : i] else 1
                if run >= MIN_REPEATS and run * n >= MIN_LOOP_WORDS:
                    return True
    return False

"""The accuracy corpus: real recordings, by category, with their reference texts.

Two kinds of items:

- bundled recordings (tests/data/speech, tests/data/hard; sources and licences in the
  SOURCES.md beside each manifest), used as they are;
- items built here from those real recordings, to reach the cases archives hold that no
  bundled file shows on its own: two speakers on separate channels of a stereo call,
  speech 20 and 30 dB quieter, whispered speech, the last word close to the end of the
  file, narrowband telephone audio, several sentences in one long recording.

`build(folder)` writes the built items and returns every item; the bench
(`bench/accuracy.py`) and the tests read the same list, so a category means the same
thing in both.
"""

from __future__ import annotations

import csv
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
SPEECH = DATA / "speech"
HARD = DATA / "hard"
BENCH = DATA / "bench-speech"
SAMPLE_RATE = 16_000

# Categories scored by English WER; the others are scored by what the pipeline must say
# about them (non-English speech flagged for an English-only model, no speech found in
# music, noise and silence).
ENGLISH_CATEGORIES = ("read", "short", "accented", "telephone", "quiet", "whispered", "stereo", "edge", "long")


@dataclass(frozen=True)
class Item:
    """One recording of the corpus.

    Attributes:
        path: the audio file.
        category: what makes it hard (see the module docstring).
        language: ISO code of the speech, or "" where there is none.
        reference: what is said, or "" where nothing is.
    """

    path: Path
    category: str
    language: str
    reference: str


def _manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def bundled() -> list[Item]:
    """The bundled recordings, in their categories."""
    items = []
    for row in _manifest(SPEECH):
        if row["reference_text"] and row["path"].startswith(("librispeech/", "misc/", "librivox/")):
            items.append(Item(SPEECH / row["path"], "read", "en", row["reference_text"]))
    for row in _manifest(HARD):
        category, language = row["category"], row["language"]
        if category == "music":
            category = "no_speech"
        elif language != "en":
            category = "other_language"
        items.append(Item(HARD / row["path"], category, language, row["reference_text"]))
    return items


def read_clips() -> list[Item]:
    """The read LibriSpeech clips that have a reference, shortest first."""
    clips = [i for i in bundled() if i.category == "read" and i.path.parent.name == "librispeech"]
    return sorted(clips, key=lambda i: (i.path.stat().st_size, i.path.name))


def decode(path: Path) -> np.ndarray:
    from pipeline.audio import decode as _decode

    return _decode(str(path)).samples


def write_wav(path: Path, channels: list[np.ndarray], rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM WAV of one or more equally long float channels."""
    frames = np.stack(channels, axis=1) if len(channels) > 1 else channels[0][:, None]
    pcm = (np.clip(frames, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def speech_end(samples: np.ndarray, frame: int = 160, floor_db: float = -40.0) -> int:
    """The sample after the last 10 ms frame within `floor_db` of the loudest frame."""
    n = len(samples) // frame
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > floor_db)[0]
    return int((loud[-1] + 1) * frame) if len(loud) else len(samples)


def _pad(samples: np.ndarray, before_s: float, total: int) -> np.ndarray:
    out = np.zeros(total, np.float32)
    start = int(before_s * SAMPLE_RATE)
    out[start : start + len(samples)] = samples[: total - start]
    return out


def whispered(samples: np.ndarray, level_db: float = -20.0, seed: int = 0) -> np.ndarray:
    """The same words whispered: the voice's pitch replaced by breath noise.

    No whispered recording with a transcript is bundled, so it is made from read speech
    as a noise-excited vocoder does: in 32 ms frames (8 ms apart), the spectral envelope
    (the cepstrum's first 30 coefficients: the formants that carry the words, without
    the harmonics of the voice) shapes white noise. Whispers carry almost nothing below
    500 Hz and are quieter than the voice (`level_db` below the original's RMS). The
    voicing of the four whispered items (see `voicing`) is 0.20-0.25, that of their originals 0.38-0.65.
    """
    frame, hop, lifter = 512, 128, 30
    rng = np.random.default_rng(seed)
    window = np.hanning(frame + 1)[:-1]
    padded = np.concatenate([np.zeros(frame), samples.astype(np.float64), np.zeros(frame)])
    starts = hop * np.arange((len(padded) - frame) // hop + 1)
    index = starts[:, None] + np.arange(frame)[None, :]
    spectrum = np.fft.rfft(padded[index] * window, axis=1)
    cepstrum = np.fft.irfft(np.log(np.abs(spectrum) + 1e-9), frame, axis=1)
    cepstrum[:, lifter : frame - lifter + 1] = 0
    envelope = np.exp(np.fft.rfft(cepstrum, axis=1).real)
    noise = np.fft.rfft(rng.standard_normal(index.shape) * window, axis=1)
    shaped = envelope * noise
    shaped[:, np.fft.rfftfreq(frame, 1 / SAMPLE_RATE) < 500] = 0
    out = np.zeros(len(padded))
    np.add.at(out, index, np.fft.irfft(shaped, frame, axis=1) * window)
    out = out[frame : frame + len(samples)]
    gain = np.sqrt(np.mean(samples.astype(np.float64) ** 2) / np.mean(out**2)) * 10 ** (level_db / 20)
    return (out * gain).astype(np.float32)


def voicing(samples: np.ndarray, frame: int = 640) -> float:
    """Median, over the frames within 20 dB of the loudest, of the autocorrelation peak
    at lags of 80-400 Hz: near 1 for a steady voice, near 0.25 for shaped noise."""
    n = len(samples) // frame
    frames = samples[: n * frame].reshape(n, frame).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    energy = np.sum(frames**2, axis=1)
    peaks = []
    for f in frames[energy >= energy.max() / 100]:
        ac = np.correlate(f, f, "full")[frame - 1 :]
        peaks.append(ac[SAMPLE_RATE // 400 : SAMPLE_RATE // 80].max() / ac[0])
    return float(np.median(peaks))


def build(folder: Path) -> list[Item]:
    """Write the built items into `folder`; return them with the bundled ones."""
    from pipeline.audio import ffmpeg_exe

    folder.mkdir(parents=True, exist_ok=True)
    clips = read_clips()
    built: list[Item] = []

    # Two speakers of a call, each on their own channel, taking turns: a mono downmix
    # halves each, and the second one starts where the first has stopped.
    for n, (a, b) in enumerate([(clips[-1], clips[2]), (clips[-2], clips[4])]):
        left, right = decode(a.path), decode(b.path)
        total = len(left) + len(right) + 2 * SAMPLE_RATE
        path = folder / f"stereo-{n}.wav"
        write_wav(path, [_pad(left, 0.5, total), _pad(right, 1.5 + len(left) / SAMPLE_RATE, total)])
        built.append(Item(path, "stereo", "en", f"{a.reference} {b.reference}"))

    # Quiet speech: the same recordings 20 and 30 dB down.
    for db in (20, 30):
        for clip in clips[3:6]:
            path = folder / f"quiet-{db}db-{clip.path.stem}.wav"
            write_wav(path, [decode(clip.path) * 10 ** (-db / 20)])
            built.append(Item(path, "quiet", "en", clip.reference))

    # Whispered speech (see `whispered`).
    for n in (1, 5, 6, 9):
        clip = clips[n]
        path = folder / f"whispered-{clip.path.stem}.wav"
        write_wav(path, [whispered(decode(clip.path), seed=n)])
        built.append(Item(path, "whispered", "en", clip.reference))

    # The last word within 0.3 s of the end of the file.
    for clip in clips[:6]:
        samples = decode(clip.path)
        path = folder / f"edge-{clip.path.stem}.wav"
        write_wav(path, [samples[: speech_end(samples) + int(0.3 * SAMPLE_RATE)]])
        built.append(Item(path, "edge", "en", clip.reference))

    # Narrowband: 8 kHz mu-law, as telephone archives store calls.
    for clip in clips[6:9]:
        path = folder / f"phone-{clip.path.stem}.wav"
        subprocess.run(
            [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(clip.path),
             "-ar", "8000", "-ac", "1", "-acodec", "pcm_mulaw", str(path)],
            check=True,
        )
        built.append(Item(path, "telephone", "en", clip.reference))

    # One long recording (4 min): read clips and two sonnets in turn, none twice, with
    # the pauses of a reader.
    sonnets = [
        Item(BENCH / row["path"], "read", "en", row["reference_text"]) for row in _manifest(BENCH)
    ]
    parts, texts = [], []
    for clip in [sonnets[0], *clips[:6], sonnets[1], *clips[6:]]:
        parts += [decode(clip.path), np.zeros(int(0.8 * SAMPLE_RATE), np.float32)]
        texts.append(clip.reference)
    path = folder / "long-reading.wav"
    write_wav(path, [np.concatenate(parts)])
    built.append(Item(path, "long", "en", " ".join(texts)))
    return bundled() + built

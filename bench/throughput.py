"""Throughput and accuracy: plain faster-whisper against `bulkscribe run`, side by side.

Builds a corpus of at least 10 minutes from the bundled clips that have reference
texts (several files, each a sequence of clips with short pauses), then runs, one after
the other on the same machine:

  plain       a loop of WhisperModel(<tiny.en folder>, compute_type="int8").transcribe(path)
              with faster-whisper's defaults (beam 5, no VAD, its default threads)
  bulkscribe  `bulkscribe run CORPUS --output OUT` with its defaults (embedded Ray,
              one 1-thread actor per core, beam 5, VAD), Ray start-up included

and prints the real-time factor (audio seconds per wall second) of each, their ratio,
and the WER of each with the Whisper English normalizer.

    python bench/throughput.py [--minutes 10] [--files 8] [-- extra bulkscribe run options]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import duckdb
import numpy as np

from pipeline import audio, models
from pipeline.evaluate import wer

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "data" / "speech"
WORK = ROOT / "bench" / "_work"
PAUSE_S = 0.6


def clips_with_references() -> list[tuple[Path, str]]:
    with open(SPEECH / "manifest.csv", newline="", encoding="utf-8") as f:
        return [(SPEECH / r["path"], r["reference_text"]) for r in csv.DictReader(f) if r["reference_text"]]


def build_corpus(folder: Path, minutes: float, files: int) -> dict[str, str]:
    """Write `files` WAV files totalling at least `minutes`; return their references by path."""
    clips = [(audio.decode(str(p)).samples, ref) for p, ref in clips_with_references()]
    pause = np.zeros(int(PAUSE_S * audio.SAMPLE_RATE), np.float32)
    target = minutes * 60 * audio.SAMPLE_RATE / files
    folder.mkdir(parents=True, exist_ok=True)
    refs, rng = {}, np.random.default_rng(0)
    for i in range(files):
        parts, texts, n = [], [], 0
        while n < target:
            samples, ref = clips[int(rng.integers(len(clips)))]
            parts += [samples, pause]
            texts.append(ref)
            n += len(samples) + len(pause)
        path = folder / f"reading-{i:02d}.wav"
        pcm = (np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2")
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(audio.SAMPLE_RATE)
            w.writeframes(pcm.tobytes())
        refs[str(path)] = " ".join(texts)
    return refs


def run_plain(paths: list[str]) -> tuple[float, dict[str, str]]:
    from faster_whisper import WhisperModel

    start = time.perf_counter()
    model = WhisperModel(models.resolve("tiny.en").path, compute_type="int8")
    texts = {}
    for path in paths:
        segments, _ = model.transcribe(path)
        texts[path] = " ".join(s.text.strip() for s in segments)
    return time.perf_counter() - start, texts


def run_bulkscribe(corpus: Path, out: Path, extra: list[str]) -> tuple[float, dict[str, str]]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(corpus), "--output", str(out), "--no-progress", *extra],
        check=True, stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    rows = duckdb.sql(
        f"select uri, string_agg(text, ' ' order by segment) from '{out}/segments/*.parquet' group by uri"
    ).fetchall()
    return wall, dict(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("extra", nargs="*", help="extra `bulkscribe run` options, after --")
    args = parser.parse_args()

    corpus = WORK / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    refs = build_corpus(corpus, args.minutes, args.files)
    paths = sorted(refs)
    audio_s = sum(wave.open(p).getnframes() for p in paths) / audio.SAMPLE_RATE
    print(f"corpus: {len(paths)} files, {audio_s / 60:.1f} min of real read speech; "
          f"{os.cpu_count()} CPUs; {' '.join(args.extra) or 'default options'}")

    results = {}
    plain_wall, plain_text = run_plain(paths)
    results["plain faster-whisper"] = (plain_wall, plain_text)
    bulk_wall, bulk_text = run_bulkscribe(corpus, WORK / "out", args.extra)
    results["bulkscribe run"] = (bulk_wall, bulk_text)

    print(f"{'side':<22} {'wall s':>8} {'x real time':>12} {'WER':>7}")
    for name, (wall, texts) in results.items():
        score = wer([refs[p] for p in paths], [texts.get(p, "") for p in paths])
        print(f"{name:<22} {wall:>8.1f} {audio_s / wall:>12.1f} {score:>7.2%}")
    print(f"ratio bulkscribe / plain: {plain_wall / bulk_wall:.2f}x")


if __name__ == "__main__":
    main()

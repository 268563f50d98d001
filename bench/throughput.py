"""Throughput and accuracy of `bulkscribe run` against faster-whisper run by hand, side by side.

Four comparisons, each run one side after the other on this machine, in one process tree,
each side timed from start to end (model loading, Ray start-up and shutdown included):

  long      at least an hour of real read speech in 8 files (bundled clips with
            references, joined with short pauses). Sides: plain faster-whisper;
            BatchedInferencePipeline with its defaults; a hand-written pool of one 1-thread
            BatchedInferencePipeline process per core; `bulkscribe run` (default: beam 3,
            streams batched); `--batch-size 1` (one stream an actor: what batching buys);
            and `--beam-size 1`.
  short     200 clips of at most 15 s: plain faster-whisper against the same three runs.
  overhead  `bulkscribe run` against a hand-written multiprocessing pool running the same
            transcriber with the same options (one 1-thread process per core, model
            loaded once per process), on the long corpus (8 files an hour), in rounds
            that alternate which side goes first; the medians of wall time and of the
            steady state (each side's busy seconds per worker: a file's or a shard's
            work, start-up and shutdown left out).
  memory    `bulkscribe run` on a 5-minute file and on a 3-hour file (at batch 1 and by
            default): the peak resident memory of the busiest actor of each (recorded by
            the actor in its commit markers).

"plain" is a loop of WhisperModel(<tiny.en folder>, compute_type="int8").transcribe(path)
with faster-whisper's defaults (beam 5, temperature fallback, no VAD, its own threads).
Each side's real-time factor (audio seconds per wall second) is printed with its WER
(Whisper's English normalizer) and its ratio to the first side. WER on one read-speech
corpus says little about other audio: bench/accuracy.py scores the sides per category.

    python bench/throughput.py [--only long,short,overhead,memory] [--hours 1] [--clips 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import audio, models  # noqa: E402
from tests.wer import wer  # noqa: E402

SPEECH_FOLDERS = (ROOT / "tests" / "data" / "speech", ROOT / "tests" / "data" / "bench-speech")
WORK = ROOT / "bench" / "_work"
PAUSE_S = 0.6
SHORT_MAX_S = 15.0


def clips_with_references(max_s: float | None = None) -> list[tuple[Path, str]]:
    """The bundled recordings that have a reference text (at most `max_s` long)."""
    clips = []
    for folder in SPEECH_FOLDERS:
        with open(folder / "manifest.csv", newline="", encoding="utf-8") as f:
            clips += [
                (folder / r["path"], r["reference_text"]) for r in csv.DictReader(f)
                if r["reference_text"] and (max_s is None or float(r["duration_s"]) <= max_s)
            ]
    return clips


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def build_corpus(folder: Path, minutes: float, files: int) -> dict[str, str]:
    """Write `files` WAV files totalling at least `minutes`; return their references by path."""
    clips = [(audio.decode(str(p)).samples, ref) for p, ref in clips_with_references()]
    pause = np.zeros(int(PAUSE_S * audio.SAMPLE_RATE), np.float32)
    target = minutes * 60 * audio.SAMPLE_RATE / files
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    refs, rng = {}, np.random.default_rng(0)
    order: list[int] = []
    for i in range(files):
        parts, texts, n = [], [], 0
        while n < target:
            # Shuffled rounds over all clips: no clip twice in a row, as in real speech
            # (Whisper tends to skip a sentence repeated verbatim).
            if not order:
                order = list(rng.permutation(len(clips)))
            samples, ref = clips[order.pop()]
            parts += [samples, pause]
            texts.append(ref)
            n += len(samples) + len(pause)
        path = folder / f"reading-{i:02d}.wav"
        write_wav(path, np.concatenate(parts))
        refs[str(path)] = " ".join(texts)
    return refs


def build_short(folder: Path, count: int) -> dict[str, str]:
    """`count` copies, under new names, of the bundled clips of at most 15 s."""
    clips = clips_with_references(SHORT_MAX_S)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    refs = {}
    for i in range(count):
        source, ref = clips[i % len(clips)]
        path = folder / f"clip-{i:04d}{source.suffix}"
        shutil.copyfile(source, path)
        refs[str(path)] = ref
    return refs


def audio_seconds(paths: list[str]) -> float:
    return sum(audio.decode(p).duration_s for p in paths)


def run_plain(paths: list[str]) -> tuple[float, dict[str, str]]:
    from faster_whisper import WhisperModel

    start = time.perf_counter()
    model = WhisperModel(models.resolve("tiny.en").path, compute_type="int8")
    texts = {}
    for path in paths:
        segments, _ = model.transcribe(path)
        texts[path] = " ".join(s.text.strip() for s in segments)
    return time.perf_counter() - start, texts


def run_bulkscribe(corpus: Path, out: Path, extra: list[str] = ()) -> tuple[float, dict[str, str]]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(corpus), "--output", str(out), "--no-progress", *extra],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    rows = duckdb.sql(
        f"select uri, string_agg(text, ' ' order by start) from '{out}/segments/*.parquet' group by uri"
    ).fetchall()
    return wall, dict(rows)


_pool_model = None


def _pool_init(kind: str, model_path: str) -> None:
    global _pool_model
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    if kind == "bulkscribe":
        _pool_model = Transcriber(model_path, WhisperOptions(), cpu_threads=1)
    else:
        _pool_model = BatchedInferencePipeline(WhisperModel(model_path, compute_type="int8", cpu_threads=1))


def _pool_transcribe(path: str) -> tuple[str, str, float]:
    """A file's text, and the seconds its process spent on it (decoding included)."""
    start = time.perf_counter()
    if hasattr(_pool_model, "forward"):
        segments, _ = _pool_model.transcribe(path)
        text = " ".join(s.text.strip() for s in segments)
    else:
        transcript = _pool_model.transcribe(audio.decode(path).samples)
        text = " ".join(s.text for s in transcript.segments)
    return path, text, time.perf_counter() - start


def run_pool(paths: list[str], kind: str = "bulkscribe", busy: list[float] | None = None) -> tuple[float, dict[str, str]]:
    """A hand-written pool: one 1-thread process per core, a file per task, in name order.
    `busy` gets the seconds each task took."""
    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    texts = {}
    with ctx.Pool(len(os.sched_getaffinity(0)), _pool_init, (kind, models.resolve("tiny.en").path)) as pool:
        for path, text, seconds in pool.imap_unordered(_pool_transcribe, paths, chunksize=1):
            texts[path] = text
            if busy is not None:
                busy.append(seconds)
    return time.perf_counter() - start, texts


def run_batched(paths: list[str]) -> tuple[float, dict[str, str]]:
    """BatchedInferencePipeline with its defaults (VAD, batch 8), in this process."""
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    start = time.perf_counter()
    pipeline = BatchedInferencePipeline(WhisperModel(models.resolve("tiny.en").path, compute_type="int8"))
    texts = {}
    for path in paths:
        segments, _ = pipeline.transcribe(path)
        texts[path] = " ".join(s.text.strip() for s in segments)
    return time.perf_counter() - start, texts


def peak_rss_mb(out: Path) -> float:
    markers = [json.loads(p.read_text()) for p in (out / "_commits").glob("*.json")]
    return max(m["peak_rss_mb"] for m in markers)


def report(title: str, audio_s: float, sides: dict, refs: dict[str, str] | None, target: str) -> None:
    paths = sorted(refs) if refs else []
    print(f"\n## {title}: {audio_s / 60:.1f} min of audio; target: {target}")
    print(f"{'side':<34} {'wall s':>8} {'x real time':>12} {'WER':>7} {'x first side':>13}")
    (_, (base, _)), *_ = sides.items()
    for name, (wall, texts) in sides.items():
        score = f"{wer([refs[p] for p in paths], [texts.get(p, '') for p in paths]):.2%}" if refs else "-"
        print(f"{name:<34} {wall:>8.1f} {audio_s / wall:>12.1f} {score:>7} {base / wall:>12.2f}x")


def bench_long(hours: float) -> None:
    refs = build_corpus(WORK / "long", hours * 60, 8)
    paths = sorted(refs)
    sides = {
        "plain faster-whisper": run_plain(paths),
        "BatchedInferencePipeline": run_batched(paths),
        "pool of 1-thread batched pipelines": run_pool(paths, "batched"),
        "bulkscribe run": run_bulkscribe(WORK / "long", WORK / "out-long"),
        "bulkscribe run --batch-size 1": run_bulkscribe(WORK / "long", WORK / "out-long-s1", ["--batch-size", "1"]),
        "bulkscribe run --beam-size 1": run_bulkscribe(WORK / "long", WORK / "out-long-b1", ["--beam-size", "1"]),
    }
    report("long-form speech", audio_seconds(paths), sides, refs,
           "bulkscribe run >= 4.5x plain at its WER + 0.5 point, >= 1.2x the pool of batched pipelines")


def bench_short(count: int) -> None:
    refs = build_short(WORK / "short", count)
    paths = sorted(refs)
    sides = {
        "plain faster-whisper": run_plain(paths),
        "bulkscribe run": run_bulkscribe(WORK / "short", WORK / "out-short"),
        "bulkscribe run --batch-size 1": run_bulkscribe(WORK / "short", WORK / "out-short-s1", ["--batch-size", "1"]),
        "bulkscribe run --beam-size 1": run_bulkscribe(WORK / "short", WORK / "out-short-b1", ["--beam-size", "1"]),
    }
    report(f"{count} short clips (<= {SHORT_MAX_S:.0f} s)", audio_seconds(paths), sides, refs,
           ">= 2.8x plain, WER <= plain's + 0.5 point")


def bench_overhead(hours: float, rounds: int) -> None:
    """`rounds` rounds, each side once a round, the first side first in odd rounds and
    second in even ones (this machine's speed drifts by several percent within minutes)."""
    refs = build_corpus(WORK / "long", hours * 60, 8 * max(1, round(hours)))
    paths = sorted(refs)
    audio_s = audio_seconds(paths)
    out = WORK / "out-hour"
    workers = len(os.sched_getaffinity(0))
    names = ("hand-written process pool", "bulkscribe run")
    walls: dict[str, list[float]] = {name: [] for name in names}
    busy: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds):
        sides = {}
        for name in (names if n % 2 == 0 else names[::-1]):
            if name == names[0]:
                pool_busy: list[float] = []
                sides[name] = run_pool(paths, busy=pool_busy)
                busy[name].append(sum(pool_busy) / workers)
            else:
                # One unit at a time, as each pool process transcribes: what differs is
                # the orchestration and the output's commit protocol, not the batching.
                sides[name] = run_bulkscribe(WORK / "long", out, ["--batch-size", "1"])
                # An actor's busy time: each shard's work (decoding, transcribing, writing
                # and committing its parts), as its marker records it.
                busy[name].append(sum(json.loads(p.read_text())["wall_s"] for p in (out / "_commits").glob("*.json"))
                                  / workers)
            walls[name].append(sides[name][0])
        report(f"overhead, round {n + 1} of {rounds} (same transcriber, same options)", audio_s,
               {name: sides[name] for name in names}, refs, ">= 0.95x the process pool")
    print(f"\n## overhead over {rounds} round(s): {audio_s / 60:.1f} min of audio, medians")
    print(f"{'side':<34} {'wall s':>8} {'x pool':>7} {'busy s':>8} {'x pool':>7}   "
          "(busy: seconds of work per worker, start-up and shutdown left out)")
    for name in names:
        wall, work = statistics.median(walls[name]), statistics.median(busy[name])
        print(f"{name:<34} {wall:>8.1f} {statistics.median(walls[names[0]]) / wall:>6.2f}x "
              f"{work:>8.1f} {statistics.median(busy[names[0]]) / work:>6.2f}x")
    print("targets: wall >= 0.95x the pool, busy (steady state) >= 0.98x")


def bench_memory() -> None:
    clips = [audio.decode(str(p)).samples for p, _ in clips_with_references()]
    speech = np.concatenate([np.concatenate([c, np.zeros(int(PAUSE_S * audio.SAMPLE_RATE), np.float32)]) for c in clips])
    peaks = {}
    for name, seconds, extra in (("5-minute file", 300, []), ("3-hour file, batch 1", 3 * 3600, ["--batch-size", "1"]),
                                 ("3-hour file", 3 * 3600, [])):
        folder = WORK / f"mem-{seconds}"
        if not folder.exists():
            folder.mkdir(parents=True)
            reps = int(np.ceil(seconds * audio.SAMPLE_RATE / len(speech)))
            write_wav(folder / "long.wav", np.tile(speech, reps)[: seconds * audio.SAMPLE_RATE])
        out = WORK / f"out-mem-{seconds}{'-'.join(extra)}"
        wall, _ = run_bulkscribe(folder, out, extra)
        peaks[name] = (peak_rss_mb(out), wall, seconds)
    # The 3-hour file is 18 windows of 10 minutes; at batch 1 an actor holds one at a
    # time, by default up to 8: memory is bounded by the batch and the window, never the file.
    print("\n## memory: peak resident memory of an actor; target: 3-hour file at batch 1 <= 1.2x the 5-minute file")
    print(f"{'run':<22} {'peak RSS MB':>12} {'wall s':>8} {'x real time':>12}")
    for name, (peak, wall, seconds) in peaks.items():
        print(f"{name:<22} {peak:>12.0f} {wall:>8.1f} {seconds / wall:>12.1f}")
    print(f"ratio 3-hour at batch 1 / 5-minute: {peaks['3-hour file, batch 1'][0] / peaks['5-minute file'][0]:.2f}x; "
          f"default batch / batch 1 on the 3-hour file: {peaks['3-hour file'][0] / peaks['3-hour file, batch 1'][0]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="long,short,overhead,memory")
    parser.add_argument("--clips", type=int, default=200, help="short clips (default 200)")
    parser.add_argument("--hours", type=float, default=1.0, help="overhead corpus (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="overhead: rounds of both sides (default 3)")
    args = parser.parse_args()
    import platform

    from pipeline.tune import load_profile, node_shape

    shape = node_shape()
    print(f"machine: {shape['cpu_model']}, {shape['cpus']} CPUs, {shape['memory_gib']} GiB; {platform.python_version()}; "
          f"tuning profile: {load_profile() or 'none (defaults)'}")
    wanted = args.only.split(",")
    if "long" in wanted:
        bench_long(args.hours)
    if "short" in wanted:
        bench_short(args.clips)
    if "overhead" in wanted:
        bench_overhead(args.hours, args.rounds)
    if "memory" in wanted:
        bench_memory()


if __name__ == "__main__":
    main()

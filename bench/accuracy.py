"""WER per category of the accuracy corpus (tests/corpus.py), side by side, in one run.

Sides, all with the same model (tiny.en int8 unless --model):

  plain            faster-whisper's own loop with its defaults (beam 5, temperature
                   fallback, no VAD, its own threads), one file after another
  plain beam 3     the same at bulkscribe's default beam (3): the text bulkscribe must
                   reproduce file by file
  plain beam 1     the same at beam 1
  batched          faster-whisper's BatchedInferencePipeline with its defaults (VAD)
  bulkscribe       `bulkscribe run` with its defaults (embedded Ray, Ray start-up included)
  bulkscribe alone `bulkscribe run --batch-size 1`: each file decoded with no other beside
                   it, the text the default's batching must not change
  bulkscribe b5    `bulkscribe run --beam-size 5`
  bulkscribe b1    `bulkscribe run --beam-size 1`

WER uses the English normalizer of the Whisper paper. Categories without English speech
are scored by what each side says of them: for other languages, how many files
bulkscribe routes to the multilingual model or flags `language_mismatch` (bench/languages.py
scores the routed text); for music, noise and silence, how many files come
out with text that is neither `no_speech` nor flagged. The bar for the default: no
category more than 0.5 WER points above plain faster-whisper.

    python bench/accuracy.py [--model tiny.en] [--only "plain,plain beam 3,bulkscribe"]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import models  # noqa: E402
from tests.wer import wer  # noqa: E402
from tests import corpus  # noqa: E402

WORK = ROOT / "bench" / "_work" / "accuracy"
BAR_POINTS = 0.5


def plain(paths: list[Path], model: str, **options) -> dict[str, dict]:
    from faster_whisper import WhisperModel

    m = WhisperModel(models.resolve(model).path, compute_type="int8")
    found = {}
    for path in paths:
        start = time.perf_counter()
        segments, _ = m.transcribe(str(path), **options)
        text = " ".join(s.text.strip() for s in segments)
        found[path.name] = {"text": text, "status": None, "flags": [], "busy_s": time.perf_counter() - start}
    return found


def batched(paths: list[Path], model: str) -> dict[str, dict]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    pipeline = BatchedInferencePipeline(WhisperModel(models.resolve(model).path, compute_type="int8"))
    found = {}
    for path in paths:
        segments, _ = pipeline.transcribe(str(path))
        found[path.name] = {"text": " ".join(s.text.strip() for s in segments), "status": None, "flags": [],
                            "busy_s": None}
    return found


def bulkscribe(folder: Path, model: str, *extra: str) -> dict[str, dict]:
    from pipeline.query import open_output

    out = WORK / ("out" + "".join(extra).replace("-", "_").replace(" ", ""))
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(folder), "--output", str(out), "--model", model,
         "--no-progress", *extra],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    views = open_output(str(out))
    segments = views.segments.to_table().sort_by([("uri", "ascending"), ("segment", "ascending")]).to_pylist()
    found = {}
    for row in views.files.to_table().to_pylist():
        name = row["uri"].rsplit("/", 1)[1]
        text = " ".join(s["text"] for s in segments if s["uri"] == row["uri"])
        found[name] = {"text": text, "status": row["status"], "flags": row["flags"] or [], "model": row["model"],
                       "busy_s": (row["decode_s"] or 0.0) + (row["transcribe_s"] or 0.0)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--only", default="plain,plain beam 3,plain beam 1,batched,bulkscribe,bulkscribe alone,"
                                          "bulkscribe b5,bulkscribe b1")
    args = parser.parse_args()
    wanted = args.only.split(",")

    shutil.rmtree(WORK, ignore_errors=True)
    items = corpus.build(WORK / "built")
    folder = WORK / "in"
    folder.mkdir(parents=True)
    named: dict[str, corpus.Item] = {}
    for n, item in enumerate(items):
        name = f"{n:02d}-{item.category}-{item.path.name}"
        shutil.copy(item.path, folder / name)
        named[name] = item
    paths = [folder / name for name in named]
    audio_s = sum(_duration(p) for p in paths)

    runs = {
        "plain": lambda: plain(paths, args.model),
        "plain beam 3": lambda: plain(paths, args.model, beam_size=3),
        "plain beam 1": lambda: plain(paths, args.model, beam_size=1),
        "batched": lambda: batched(paths, args.model),
        "bulkscribe": lambda: bulkscribe(folder, args.model),
        "bulkscribe alone": lambda: bulkscribe(folder, args.model, "--batch-size", "1"),
        "bulkscribe b5": lambda: bulkscribe(folder, args.model, "--beam-size", "5"),
        "bulkscribe b1": lambda: bulkscribe(folder, args.model, "--beam-size", "1"),
    }
    results, walls = {}, {}
    for side in wanted:
        start = time.perf_counter()
        results[side] = runs[side]()
        walls[side] = time.perf_counter() - start

    print(f"accuracy corpus: {len(items)} files, {audio_s / 60:.1f} min; model {args.model}")
    print(f"{'category':<16} {'files':>5}" + "".join(f" {side:>14}" for side in wanted))
    rows = {}
    everything: dict[str, list] = {side: [[], []] for side in wanted}
    for category in corpus.ENGLISH_CATEGORIES:
        chosen = [name for name, item in named.items() if item.category == category]
        refs = [named[n].reference for n in chosen]
        scores = {}
        for side in wanted:
            hyps = [results[side][n]["text"] for n in chosen]
            scores[side] = wer(refs, hyps)
            everything[side][0] += refs
            everything[side][1] += hyps
        rows[category] = scores
        print(f"{category:<16} {len(chosen):>5}" + "".join(f" {scores[s]:>14.2%}" for s in wanted))
    overall = {side: wer(*everything[side]) for side in wanted}
    rows["all English"] = overall
    print(f"{'all English':<16} {sum(len(v[0]) for v in everything.values()) // len(wanted):>5}"
          + "".join(f" {overall[s]:>14.2%}" for s in wanted))
    for category, question in (("other_language", "routed to another model, or flagged language_mismatch"),
                               ("no_speech", "text neither no_speech nor flagged")):
        chosen = [name for name, item in named.items() if item.category == category]
        counts = []
        for side in wanted:
            got = [results[side][n] for n in chosen]
            if category == "other_language":
                counts.append(sum("language_mismatch" in g["flags"] or g["model"] != args.model for g in got)
                              if side.startswith("bulk") else None)
            else:
                counts.append(sum(bool(g["text"]) and g["status"] != "no_speech" and not g["flags"] for g in got))
        print(f"{category:<16} {len(chosen):>5}" + "".join(f" {'-' if c is None else c:>14}" for c in counts)
              + f"   ({question})")
    print(f"{'wall s':<16} {'':>5}" + "".join(f" {walls[s]:>14.1f}" for s in wanted))
    print(f"{'x real time':<16} {'':>5}" + "".join(f" {audio_s / walls[s]:>14.1f}" for s in wanted))
    # Speed per category, each file's own time: plain decodes one file at a time on all
    # the cores' threads; a bulkscribe actor (one stream) decodes on one thread, with one actor per core
    # side by side, so its rate per core is what must not fall below plain's per machine.
    # A batched unit's transcribe_s is wall time shared with the units beside it: only
    # the unbatched side's per-file time says how fast each category is.
    timed = [s for s in wanted if s in ("plain", "plain beam 3", "bulkscribe alone")]
    if timed:
        cores = len(os.sched_getaffinity(0))
        print(f"x real time per file in each category (plain: one file at a time, {cores} threads; "
              f"bulkscribe: one actor, 1 thread, {cores} actors side by side)")
        print(f"{'category':<16} {'files':>5}" + "".join(f" {side:>14}" for side in timed))
        for category in [*corpus.ENGLISH_CATEGORIES, "other_language", "no_speech"]:
            chosen = [name for name, item in named.items() if item.category == category]
            seconds = sum(_duration(folder / n) for n in chosen)
            rates = [seconds / max(sum(results[s][n]["busy_s"] for n in chosen), 1e-9) for s in timed]
            print(f"{category:<16} {len(chosen):>5}" + "".join(f" {r:>14.1f}" for r in rates))
    if "plain beam 3" in wanted and "bulkscribe" in wanted:
        # Each file alone: plain decodes one file at a time, so a bulkscribe transcript
        # equal to plain's at the same options holds no word of another file. Files that
        # fell back to sampling may differ (plain seeds it at random in every process).
        ok = [n for n in named if results["bulkscribe"][n]["status"] == "ok"]
        differ = [n for n in ok if results["bulkscribe"][n]["text"] != results["plain beam 3"][n]["text"]]
        print(f"files transcribed ok whose bulkscribe text differs from plain beam 3's: {len(differ)} of {len(ok)}"
              + "".join(f"\n  {n}" for n in differ))
    if "bulkscribe alone" in wanted and "bulkscribe" in wanted:
        # Batching shares decoder calls only: every file's text must be what it is alone.
        differ = [n for n in named if (results["bulkscribe"][n]["text"], results["bulkscribe"][n]["status"])
                  != (results["bulkscribe alone"][n]["text"], results["bulkscribe alone"][n]["status"])]
        print(f"files whose batched text or status differs from the same file decoded alone: {len(differ)} of "
              f"{len(named)}" + "".join(f"\n  {n}" for n in differ))
    if "plain" in wanted and "bulkscribe" in wanted:
        worse = [c for c, s in rows.items() if (s["bulkscribe"] - s["plain"]) * 100 > BAR_POINTS]
        print(f"bar (bulkscribe default <= plain + {BAR_POINTS} points in every category): "
              + ("met" if not worse else f"NOT met in {', '.join(worse)}"))


def _duration(path: Path) -> float:
    from pipeline.audio import decode

    return decode(str(path)).duration_s


if __name__ == "__main__":
    main()

"""Files in other languages: routing in one run, its accuracy, its false routings, its cost.

Four measurements, each `bulkscribe run` with its defaults (tiny.en, routing to base):

  routed    the accuracy corpus (tests/corpus.py: English in nine categories, Russian and
            Chinese, music and noise) in one run: each non-English file's text against
            `bulkscribe run --model base` of the non-English files alone (identical or
            not), its WER (Russian, Whisper's basic normalizer) or CER (Chinese); and
            English files routed by mistake.
  english   every English file of the bench corpora (bench/throughput.py's 200 short
            clips and its hour of long-form reading): how many are routed (target 0).
  mixed     throughput of 100 short files, 90% English and 10% in other languages,
            against the same 100 slots all English, side by side; and the peak memory of
            an actor of each run (it holds base beside tiny.en in the mixed one).

What the decision is made from: an English-only transcript is doubtful when flagged or
when its duration-weighted avg_logprob is below -0.5; only then are base's language
probabilities over the file's first 30 s asked, and the file is routed where English
gets under 0.1 (pipeline/quality.py).

    python bench/languages.py [--only routed,english,mixed]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests import corpus  # noqa: E402
from tests.wer import wer  # noqa: E402

WORK = ROOT / "bench" / "_work" / "languages"


def run(inputs: Path, out: Path, *extra: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(inputs), "--output", str(out), "--no-progress",
                    *extra], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def rows(out: Path) -> dict[str, dict]:
    found = duckdb.sql(
        f"select f.uri, f.model, f.language, f.status, coalesce(string_agg(s.text, '' order by s.segment), '') "
        f"from '{out}/files/*.parquet' f left join '{out}/segments/*.parquet' s using (unit_id) group by all").fetchall()
    return {Path(uri).name: {"model": m, "language": lang, "status": st, "text": t} for uri, m, lang, st, t in found}


def peak_rss_mb(out: Path) -> float:
    return max(json.loads(p.read_text())["peak_rss_mb"] for p in (out / "_commits").glob("*.json"))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate over the characters that are not spaces or punctuation."""
    import jiwer

    ref, hyp = (re.sub(r"[\W_]+", "", t) for t in (reference, hypothesis))
    return float(jiwer.cer(ref, hyp))


def basic_wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER with Whisper's basic (language-neutral) normalizer."""
    import jiwer
    from whisper_normalizer.basic import BasicTextNormalizer

    normalize = BasicTextNormalizer()
    return float(jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses]))


def bench_routed() -> None:
    items = corpus.build(WORK / "built")
    folder, foreign = WORK / "in", WORK / "foreign"
    for f in (folder, foreign):
        shutil.rmtree(f, ignore_errors=True)
        f.mkdir(parents=True)
    named = {}
    for n, item in enumerate(items):
        name = f"{n:02d}-{item.category}-{item.path.name}"
        shutil.copy(item.path, folder / name)
        named[name] = item
        if item.category == "other_language":
            shutil.copy(item.path, foreign / name)
    wall = run(folder, WORK / "out")
    base_wall = run(foreign, WORK / "out-base", "--model", "base")
    got, alone = rows(WORK / "out"), rows(WORK / "out-base")
    print(f"routed: the accuracy corpus, {len(named)} files, in one run ({wall:.0f} s); the "
          f"{len(alone)} non-English files alone with --model base ({base_wall:.0f} s)")
    english = [n for n, item in named.items() if item.language == "en"]
    wrongly = [n for n in english if got[n]["model"] != "tiny.en"]
    print(f"  English files routed: {len(wrongly)} of {len(english)}" + "".join(f"\n    {n}" for n in wrongly))
    others = [n for n, item in named.items() if item.category == "other_language"]
    same = [n for n in others if (got[n]["text"], got[n]["language"]) == (alone[n]["text"], alone[n]["language"])]
    print(f"  non-English files routed to base: {sum(got[n]['model'] == 'base' for n in others)} of {len(others)}; "
          f"text identical to --model base alone: {len(same)} of {len(others)}")
    for language in sorted({named[n].language for n in others}):
        chosen = [n for n in others if named[n].language == language]
        refs = [named[n].reference for n in chosen]
        hyps = [got[n]["text"] for n in chosen]
        if language == "zh":
            score = sum(cer(r, h) for r, h in zip(refs, hyps)) / len(chosen)
            print(f"  {language}: {len(chosen)} files, CER {score:.1%} (mean per file)")
        else:
            print(f"  {language}: {len(chosen)} files, WER {basic_wer(refs, hyps):.1%} (basic normalizer; "
                  f"detected as {', '.join(sorted({got[n]['language'] for n in chosen}))})")


def bench_english() -> None:
    import throughput

    short = throughput.build_short(WORK / "short", 200)
    long = throughput.build_corpus(WORK / "long", 60, 8)
    for name, refs, folder in (("short clips", short, WORK / "short"), ("long-form reading", long, WORK / "long")):
        wall = run(folder, WORK / f"out-{folder.name}")
        got = rows(WORK / f"out-{folder.name}")
        routed = [n for n, r in got.items() if r["model"] != "tiny.en"]
        texts = [got[Path(p).name]["text"] for p in refs]
        print(f"english: {name}, {len(got)} files ({wall:.0f} s): routed {len(routed)}; WER "
              f"{wer(list(refs.values()), texts):.2%}" + "".join(f"\n    {n}" for n in routed))


def bench_mixed() -> None:
    import throughput

    clips = throughput.build_short(WORK / "english", 100)
    others = [p for p in sorted((ROOT / "tests" / "data" / "hard").rglob("*"))
              if p.name.startswith(("ru_", "zh_"))]
    mixed = WORK / "mixed"
    shutil.rmtree(mixed, ignore_errors=True)
    shutil.copytree(WORK / "english", mixed)
    english = sorted(mixed.iterdir())
    for i, path in enumerate(english[::10]):  # every tenth slot: a file in another language
        path.unlink()
        shutil.copy(others[i % len(others)], mixed / f"other-{i:02d}-{others[i % len(others)].name}")
    seconds = {folder.name: _audio_s(folder) for folder in (WORK / "english", mixed)}
    walls = {}
    for folder in (WORK / "english", mixed):
        walls[folder.name] = run(folder, WORK / f"out-{folder.name}")
    for name in ("english", "mixed"):
        out = WORK / f"out-{name}"
        got = rows(out)
        rate = seconds[name] / walls[name]
        print(f"mixed: {name:<8} {len(got)} files, {seconds[name]:.0f} s of audio in {walls[name]:.0f} s: "
              f"{rate:.1f}x real time; routed {sum(r['model'] != 'tiny.en' for r in got.values())}; "
              f"actor peak memory {peak_rss_mb(out):.0f} MB")
    print(f"mixed: the mixed run at {seconds['mixed'] / walls['mixed'] / (seconds['english'] / walls['english']):.2f}x "
          f"the English-only run's real-time factor ({len(clips)} files each)")


def _audio_s(folder: Path) -> float:
    from pipeline.audio import decode

    return sum(decode(str(p)).duration_s for p in folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="routed,english,mixed")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    for part in args.only.split(","):
        {"routed": bench_routed, "english": bench_english, "mixed": bench_mixed}[part]()


if __name__ == "__main__":
    main()

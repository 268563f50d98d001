"""Stereo calls: each channel transcribed on its own against the mixdown, and dual mono.

From the bundled real recordings with references, PAIRS stereo "calls" are made: one
utterance on the left channel, another on the right starting OFFSET seconds later, so
that the two speakers overlap as in a call. One `bulkscribe run --channels split` of all
of them, and one `bulkscribe run` (the default mixdown) of the same files, side by side:

- WER per channel (each channel's text against its own utterance);
- WER of the mixdown, against both utterances in the order they start;
- a dual-mono copy of every left utterance (the same signal on both channels): how many
  of their channels were transcribed (target: one per file), and the wall time of the
  split run of the dual-mono files against a run of the same utterances as mono files.

    python bench/channels.py [--pairs 12] [--offset 1.5]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from languages import run  # noqa: E402  (bench/languages.py: a timed `bulkscribe run`)
from pipeline import audio  # noqa: E402
from pipeline.query import open_output  # noqa: E402
from tests.helpers import write_wav  # noqa: E402
from tests.wer import wer  # noqa: E402

SPEECH = ROOT / "tests" / "data" / "speech"
WORK = ROOT / "bench" / "_work" / "channels"


def texts(out: Path) -> dict[tuple[str, int | None], str]:
    rows = open_output(str(out)).sql(
        "select uri, channel, string_agg(text, '' order by start) from segments group by 1, 2").fetchall()
    return {(Path(uri).name, channel): text for uri, channel, text in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--offset", type=float, default=1.5, help="seconds the right channel starts after the left")
    args = parser.parse_args()
    with open(SPEECH / "manifest.csv", newline="", encoding="utf-8") as f:
        clips = [(r["path"], r["reference_text"]) for r in csv.DictReader(f)
                 if r["reference_text"] and float(r["duration_s"]) <= 20]
    pairs = [(clips[i % len(clips)], clips[(i + 1 + i // len(clips)) % len(clips)]) for i in range(args.pairs)]
    shutil.rmtree(WORK, ignore_errors=True)
    calls, duals, monos = WORK / "calls", WORK / "dual", WORK / "mono"
    for folder in (calls, duals, monos):
        folder.mkdir(parents=True)
    references = {}
    for i, ((left, left_ref), (right, right_ref)) in enumerate(pairs):
        a, b = audio.decode(str(SPEECH / left)).samples, audio.decode(str(SPEECH / right)).samples
        b = np.concatenate([np.zeros(int(args.offset * audio.SAMPLE_RATE), np.float32), b])
        name = f"call-{i:03d}.wav"
        write_wav(calls / name, a, b)
        write_wav(duals / name, a, a)
        write_wav(monos / name, a)
        references[name] = (left_ref, right_ref)

    split = WORK / "out-split"
    mixed = WORK / "out-mix"
    split_s = run(calls, split, "--channels", "split")
    mix_s = run(calls, mixed)
    dual_s = run(duals, WORK / "out-dual", "--channels", "split")
    mono_s = run(monos, WORK / "out-mono")

    by_channel, by_mix = texts(split), texts(mixed)
    names = sorted(references)
    left = wer([references[n][0] for n in names], [by_channel.get((n, 0), "") for n in names])
    right = wer([references[n][1] for n in names], [by_channel.get((n, 1), "") for n in names])
    both = wer([" ".join(references[n]) for n in names], [by_mix.get((n, None), "") for n in names])
    both_split = wer([" ".join(references[n]) for n in names],
                     [by_channel.get((n, 0), "") + " " + by_channel.get((n, 1), "") for n in names])
    dual = open_output(str(WORK / "out-dual")).sql(
        "select count(*), count(*) filter (where same_as_channel is null and status = 'ok'), "
        "count(*) filter (where same_as_channel = 0) from files").fetchall()[0]
    print(f"{len(names)} stereo calls (two real utterances each, the right channel {args.offset} s later)")
    print(f"{'side':<34} {'wall s':>7} {'WER':>8}")
    print(f"{'--channels split: channel 0':<34} {split_s:>7.1f} {left:>8.2%}")
    print(f"{'--channels split: channel 1':<34} {'':>7} {right:>8.2%}")
    print(f"{'--channels split: both channels':<34} {'':>7} {both_split:>8.2%}")
    print(f"{'mixdown (default)':<34} {mix_s:>7.1f} {both:>8.2%}")
    print(f"\ndual mono: {dual[0]} channel rows, {dual[1]} transcribed, {dual[2]} found to repeat channel 0; "
          f"{dual_s:.1f} s against {mono_s:.1f} s for the same utterances as mono files ({dual_s / mono_s:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

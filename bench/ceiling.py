"""The ceiling that Whisper's 30 s encoder window puts on any engine that decodes each
file alone, measured side by side with plain faster-whisper in one run.

Plain faster-whisper (`WhisperModel(tiny.en, int8)`, its defaults) transcribes a corpus
while every encoder call it makes is counted and its input kept; then the same inputs
are encoded again by a 1-thread model, one window a call (two or more a call is slower:
`batching.py`). Whatever else an engine does, each of those windows must be encoded, so
an engine on CORES cores cannot beat plain by more than

    plain wall time / (encoder seconds on one core / CORES)

even with a free decoder, no fallback, no start-up and perfect use of every core. The
corpora are those of `throughput.py`: the 200 short clips (`--only short`) and the hour
of long-form speech (`--only long`); they are built if missing.

    python bench/ceiling.py [--only short,long] [--clips 200] [--hours 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import models  # noqa: E402
from throughput import WORK, build_corpus, build_short  # noqa: E402


class _Counting:
    """A CTranslate2 model whose `encode` inputs are kept (as numpy arrays)."""

    def __init__(self, model):
        self._model = model
        self.inputs: list[np.ndarray] = []

    def encode(self, features, *args, **kwargs):
        self.inputs.append(np.array(features, copy=True))
        return self._model.encode(features, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def ceiling(paths: list[str], cores: int) -> dict[str, float]:
    import ctranslate2
    from faster_whisper import WhisperModel

    path = models.resolve("tiny.en").path
    started = time.perf_counter()
    plain = WhisperModel(path, device="cpu", compute_type="int8")
    counting = _Counting(plain.model)
    plain.model = counting
    for p in paths:
        segments, _ = plain.transcribe(p)
        list(segments)
    plain_s = time.perf_counter() - started
    one = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=1)
    started = time.perf_counter()
    for features in counting.inputs:
        one.model.encode(ctranslate2.StorageView.from_array(features))
    encoder_s = time.perf_counter() - started
    windows = len(counting.inputs)
    return {"files": len(paths), "windows": windows, "plain_s": plain_s, "encoder_s": encoder_s,
            "per_window_s": encoder_s / windows, "ceiling": plain_s / (encoder_s / cores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="short,long")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--hours", type=float, default=1.0)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; tiny.en int8; encoder one window a call on one thread")
    print(f"{'corpus':<28} {'files':>6} {'windows':>8} {'plain s':>8} {'encoder s':>10} {'s/window':>9} "
          f"{'ceiling x plain':>16}")
    for name in args.only.split(","):
        if name == "short":
            paths = sorted(build_short(WORK / "short", args.clips))
            label = f"{args.clips} short clips"
        else:
            paths = sorted(build_corpus(WORK / "long", args.hours * 60, 8 * max(1, round(args.hours))))
            label = f"long form, {args.hours:g} h"
        r = ceiling(paths, cores)
        print(f"{label:<28} {r['files']:>6} {r['windows']:>8} {r['plain_s']:>8.1f} {r['encoder_s']:>10.1f} "
              f"{r['per_window_s']:>9.3f} {r['ceiling']:>15.2f}x")


if __name__ == "__main__":
    main()

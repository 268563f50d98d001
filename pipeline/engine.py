"""The engine: the one module that imports faster-whisper and CTranslate2.

A model is loaded here (`load_model`) and then driven through faster-whisper's own
objects by `pipeline.transcriber`; planning asks here for Silero VAD's speech regions
(`speech_regions`: where to cut a long file), the driver for the environment an actor's
process needs (`process_env`) and the model hub (`download_model`). Names that
faster-whisper keeps private (`_LANGUAGE_CODES`) are read here only, and
tests/test_structure.py fails the day they change.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16_000
# Whisper's window.
WINDOW_S = 30.0


def load_model(model_path: str, compute_type: str, cpu_threads: int):
    from faster_whisper import WhisperModel

    return WhisperModel(
        model_path,
        device="cpu",
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        num_workers=1,
        local_files_only=True,
    )


def process_env(threads: int) -> dict[str, str]:
    """Environment for a process that will run CTranslate2 with `threads` threads; it must
    be set before the process starts.

    With OMP_NUM_THREADS=1 (what Ray gives a 1-CPU actor) CTranslate2 4.8 computes
    through other kernels: tiny.en decoded LDC93S1 at avg_logprob -0.4827 instead of
    -0.4769, split JFK into two segments and, falling back, wrote "break and noise
    speech" for "break a nice speech". Unset, 2 or 4 all gave the same results, with 1
    or 2 intra-op threads (`cpu_threads` sets those), as does faster-whisper run by hand.
    So never 1: the same file gives the same text on actors of any size.
    """
    return {"OMP_NUM_THREADS": str(max(2, threads))}


@contextlib.contextmanager
def child_environment(env: dict[str, str]) -> Iterator[None]:
    """`env` in this process's environment for the block, for the processes started in
    it (`process_env` must be there when a process starts); as it was after."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def speech_regions(audio: np.ndarray, min_silence_ms: int = 160, pad_ms: int = 400) -> list[tuple[int, int]]:
    """Silero VAD's speech regions of 16 kHz `audio`, as (start, end) sample offsets.

    Used only to place the cuts between the windows of a long file in pauses; it never
    decides what is transcribed.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if len(audio) == 0:
        return []
    vad = VadOptions(max_speech_duration_s=WINDOW_S, min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms)
    return [(int(r["start"]), int(r["end"])) for r in get_speech_timestamps(audio, vad)]


def language_codes() -> frozenset[str]:
    """The language codes Whisper knows."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def download_model(name: str, cache_dir: str) -> str:
    """Fetch a faster-whisper model by name from its hub; returns the local folder."""
    from faster_whisper.utils import download_model as _download

    return _download(name, cache_dir=cache_dir)


def seed_sampling(seed: int) -> None:
    """Seed CTranslate2's sampler (the temperature fallback) in threads that have not sampled yet."""
    import ctranslate2

    ctranslate2.set_random_seed(seed)


def stacked(encoder_outputs: list):
    """One CTranslate2 array of several encoder outputs, a row each (one batched `generate`)."""
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.concatenate([np.asarray(e) for e in encoder_outputs]))

"""Helpers the test modules share: the real `bulkscribe run` in a subprocess, waiting on
a condition, and inputs made from the bundled clips. Test modules import from here,
never from each other."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np

from pipeline import audio

ROOT = Path(__file__).resolve().parents[1]

# What moto's S3 server takes for credentials (any), in the environment of its clients.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server():
    """A real S3 API server on loopback (moto's); yields its endpoint URL, with its
    credentials in this process's environment meanwhile."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# 13 real clips planned as 8 shards (the `corpus` fixture) with these options.
FAULT_RUN_OPTIONS = ("--beam-size", "1", "--shard-minutes", "0.25", "--no-progress")


def start(corpus: Path | str, out: Path | str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", str(corpus), "--output", str(out), *FAULT_RUN_OPTIONS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        # An embedded run as from a user's shell: the Ray of this test process sets
        # RAY_AUTH_MODE in its own environment, which would change what the run's Ray
        # prints. A run that joins a cluster keeps it (it needs the token).
        env={**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE" or "--address" in extra},
             "PYTHONPATH": str(ROOT), **(env or {})},
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def run_ok(corpus: Path, out: Path, *extra: str, env: dict | None = None, code_expected: int = 0) -> str:
    code, stdout, stderr = finish(start(corpus, out, *extra, env=env))
    assert code == code_expected, stderr[-3000:]
    return stdout


def wait_until(condition, timeout: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def markers_in(out: Path) -> int:
    return len(list((out / "_commits").glob("*.json"))) if (out / "_commits").exists() else 0


def make_bad_files(folder: Path, speech_dir: Path) -> dict[str, Path]:
    """Broken inputs of the kinds archives hold, each beside real audio."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {
        "empty": folder / "empty.wav",
        "text": folder / "notes.wav",
        "corrupt": folder / "corrupt.flac",
        "truncated": folder / "truncated.mp3",
    }
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is a text file, not audio\n" * 20)
    bad["corrupt"].write_bytes(bytes(range(256)) * 64)
    mp3 = (speech_dir / "librivox" / "shakespeare_sonnet_001.mp3").read_bytes()
    bad["truncated"].write_bytes(mp3[: len(mp3) // 10])
    return bad


PAUSE_S = 0.7


def reading_wav(folder: Path, speech_dir: Path, seconds: float) -> tuple[Path, str]:
    """A WAV of real LibriSpeech/TIMIT/JFK clips with short pauses, and its reference."""
    with open(speech_dir / "manifest.csv", newline="", encoding="utf-8") as f:
        clips = [(speech_dir / r["path"], r["reference_text"]) for r in csv.DictReader(f)
                 if r["reference_text"] and float(r["duration_s"]) <= 17]
    pause = np.zeros(int(PAUSE_S * audio.SAMPLE_RATE), np.float32)
    parts, texts, n, i = [], [], 0, 0
    while n < seconds * audio.SAMPLE_RATE:
        path, ref = clips[i % len(clips)]
        samples = audio.decode(str(path)).samples
        parts += [samples, pause]
        texts.append(ref)
        n += len(samples) + len(pause)
        i += 1
    folder.mkdir(parents=True, exist_ok=True)
    return write_wav(folder / "reading.wav", np.concatenate(parts)), " ".join(texts)


def write_wav(path: Path, *channels: np.ndarray) -> Path:
    """A 16 kHz 16-bit WAV with one channel per array of samples in [-1, 1] (shorter ones
    padded with silence). Samples decoded from 16-bit audio (`audio.decode` divides by
    32768) come back bit for bit: a channel then transcribes as its source file does."""
    n = max(len(c) for c in channels)
    frames = np.zeros((n, len(channels)), "<i2")
    for i, c in enumerate(channels):
        frames[: len(c), i] = np.clip(np.round(c * 32768), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(audio.SAMPLE_RATE)
        w.writeframes(frames.tobytes())
    return path

"""Shared fixtures: real speech clips, the real tiny.en model, one real local Ray."""

from __future__ import annotations

import atexit
import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "speech"

# Token authentication on, as `ray_session` sets it before Ray is imported: every Ray
# the tests start (clusters of `ray.cluster_utils` too) and every driver agree on it,
# whichever tests run and in whatever order.
os.environ.setdefault("RAY_AUTH_MODE", "token")

# A `bulkscribe tune` profile of this machine must not change what the tests run.
os.environ["BULKSCRIBE_PROFILE_DIR"] = tempfile.mkdtemp(prefix="bulkscribe-profiles-")
atexit.register(shutil.rmtree, os.environ["BULKSCRIBE_PROFILE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def references() -> dict[str, str]:
    """Reference text by path relative to tests/data/speech, for clips that have one."""
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as f:
        return {row["path"]: row["reference_text"] for row in csv.DictReader(f) if row["reference_text"]}


@pytest.fixture(scope="session")
def tiny_model():
    from pipeline import models

    return models.resolve("tiny.en")


@pytest.fixture(scope="session")
def transcriber(tiny_model):
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    return Transcriber(tiny_model.path, WhisperOptions(), cpu_threads=2)


@pytest.fixture(scope="session")
def ray_cluster():
    """One embedded Ray for the session (token authentication on, as Ray 2.60 sets it)."""
    import ray

    ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def small_corpus(tmp_path, speech_dir) -> Path:
    """Three short real clips, the noise file, and a name with spaces, quotes and $()."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for rel in ("librispeech/1089-134691-0000.flac", "misc/LDC93S1.wav", "misc/empty_noise.wav"):
        shutil.copy(speech_dir / rel, folder / Path(rel).name)
    shutil.copy(speech_dir / "librispeech/1221-135766-0002.wav", folder / "it's a \"test\" $(touch pwned).wav")
    return folder




@pytest.fixture(scope="module")
def corpus(tmp_path_factory, speech_dir) -> Path:
    """13 real clips, about 100 s of speech, planned as 8 shards by FAULT_RUN_OPTIONS."""
    folder = tmp_path_factory.mktemp("fault-corpus")
    for clip in sorted((speech_dir / "librispeech").iterdir()):
        shutil.copy(clip, folder / clip.name)
    shutil.copy(speech_dir / "misc" / "LDC93S1.wav", folder / "LDC93S1.wav")
    return folder


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The undisturbed local run that every fault scenario must equal."""
    from tests.helpers import run_ok

    out = tmp_path_factory.mktemp("reference") / "out"
    run_ok(corpus, out)
    return out


@pytest.fixture(scope="session")
def transcribed(ray_cluster, tmp_path_factory, speech_dir) -> Path:
    """A small real output folder (4 files, 3 with speech, several shards)."""
    from pipeline.config import JobSpec, WhisperOptions
    from pipeline.job import run

    src = tmp_path_factory.mktemp("src")
    for rel in ("misc/jfk.flac", "misc/LDC93S1.wav", "misc/empty_noise.wav", "librispeech/61-70968-0000.flac"):
        (src / Path(rel).parent).mkdir(exist_ok=True)
        shutil.copy(speech_dir / rel, src / rel)
    out = tmp_path_factory.mktemp("q") / "out"
    run(JobSpec(inputs=(str(src),), output=str(out), whisper=WhisperOptions(beam_size=1), progress=False,
                shard_audio_s=10))
    return out

"""`bulkscribe tune`: measure actors x threads x batch size on this node; keep the best.

Every candidate runs real transcription of the bundled sample audio in as many worker
processes as it has actors, all at once, the way a Ray node runs its actors. The
profile is written under a key made of the node's shape (CPU model, CPU count,
memory), and `bulkscribe run` uses the profile of the node it starts on unless
`--threads` or `--actors` say otherwise. The peak memory of an actor is reported
beside each candidate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import ActorOptions

logger = logging.getLogger(__name__)

PROFILE_DIR_ENV = "BULKSCRIBE_PROFILE_DIR"
# Each candidate is measured this many times, and a spread between repeats over this
# share of the speed is reported: on a busy machine one measurement picked a setting
# at 15.4x over one at 6.7x that an idle machine ranks the other way.
ROUNDS = 2
NOISE_SHARE = 0.15
# Sample audio each actor transcribes per candidate: enough to even out file lengths,
# little enough that the candidates fit in about a minute on two cores.
SAMPLE_AUDIO_S = 150.0
SAMPLE_FOLDER = Path(__file__).resolve().parents[1] / "tests" / "data" / "speech"


# Streams per actor measured with each threads x actors split (`pipeline.streams`).
BATCH_SIZES = (1, 4, 8)
# What a profile's "best" holds.
BEST_KEYS = ("threads", "actors", "batch_size")


@dataclass(frozen=True)
class Profile:
    threads: int
    actors: int
    # None in a profile measured before batching existed: the default then applies.
    batch_size: int | None = None
    # Where the profile came from, for the run's first lines.
    source: str = field(default="", compare=False)

    def as_dict(self) -> dict[str, int | None]:
        return {"threads": self.threads, "actors": self.actors, "batch_size": self.batch_size}


def node_shape() -> dict[str, Any]:
    """What makes one node's best settings differ from another's."""
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if found:
            cpu_model = found.group(1).strip()
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError):
        pass
    return {"cpu_model": cpu_model, "cpus": len(os.sched_getaffinity(0)), "memory_gib": memory_gib}


def shape_key(shape: dict[str, Any]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", str(shape["cpu_model"]).lower()).strip("-")[:40]
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:8]
    return f"{slug}-{shape['cpus']}cpu-{shape['memory_gib']}gib-{digest}"


def profile_dir() -> Path:
    return Path(os.environ.get(PROFILE_DIR_ENV) or Path.home() / ".cache" / "bulkscribe" / "profiles")


def profile_path(shape: dict[str, Any] | None = None) -> Path:
    return profile_dir() / f"{shape_key(shape or node_shape())}.json"


def load_profile(shape: dict[str, Any] | None = None) -> Profile | None:
    """The tuned settings of a node of this shape, if `bulkscribe tune` measured one."""
    path = profile_path(shape)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        batch = data["best"].get("batch_size")
        return Profile(threads=int(data["best"]["threads"]), actors=int(data["best"]["actors"]),
                       batch_size=None if batch is None else int(batch),
                       source=f"{path}, measured {data.get('measured_at', '?')}")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring the unreadable tuning profile %s: %s", path, exc)
        return None


def actor_options(threads: int | None, actors: int | None, *, embedded: bool,
                  batch_size: int | None = None) -> ActorOptions:
    """The options asked for, the rest from this node's tuning profile (`bulkscribe
    tune`), else the defaults. The profile's actor count applies only to an embedded
    Ray on this very node with no --threads given; on a cluster with neither given,
    each node's own profile applies to its actors (`per_node`). The choice is logged."""
    if not embedded and threads is None and actors is None:
        # This node's profile says nothing of the cluster's nodes: each reads its own.
        logger.info("resources: on each node of the cluster, its own tuning profile (`bulkscribe tune` there), "
                    "else one 1-thread actor per CPU; --threads and --actors override it")
        return ActorOptions(threads=1, actors=None, per_node=True, batch_size=batch_size)
    profile = load_profile() if threads is None or actors is None else None
    if profile is None:
        chosen = ActorOptions(threads=threads or 1, actors=actors, batch_size=batch_size)
        logger.info("resources: %s, %d thread(s) each (%s)",
                    f"{chosen.actors} actor(s)" if chosen.actors else "one actor per CPU", chosen.threads,
                    "as asked" if threads and actors else
                    "no tuning profile for this node: defaults; `bulkscribe tune` measures it")
        return chosen
    if actors is None and embedded and threads is None:
        actors = profile.actors  # the profile measured this very node
    threads = threads or profile.threads
    logger.info("resources: %s, %d thread(s) each (tuning profile %s; --threads and --actors override it)",
                f"{actors} actor(s)" if actors else f"one actor per {threads} CPU(s)", threads, profile.source)
    return ActorOptions(threads=threads, actors=actors, batch_size=batch_size or profile.batch_size)


def candidates(cpus: int) -> list[Profile]:
    """Threads per actor 1, 2, 4... up to the node's CPUs (actors fill the node), each with
    every batch size of BATCH_SIZES."""
    threads = [2**i for i in range(cpus.bit_length()) if 2**i <= cpus]
    return [Profile(t, cpus // t, b) for t in threads for b in BATCH_SIZES]


def sample_clips(folder: Path, audio_s: float = SAMPLE_AUDIO_S) -> list[str]:
    """Audio files of `folder`, in name order, up to about `audio_s` seconds by size."""
    from pipeline import inputs

    units = inputs.expand([str(folder)])
    chosen, total = [], 0.0
    for uri, size in zip(units.column("uri").to_pylist(), units.column("size_bytes").to_pylist()):
        chosen.append(uri)
        total += inputs.estimate_audio_s(uri, size)
        if total >= audio_s:
            break
    return chosen


def _worker(model_path: str, whisper: dict, candidate: dict, clips: list[str], start, results) -> None:
    from pipeline import audio
    from pipeline.config import WhisperOptions
    from pipeline.streams import Stream
    from pipeline.transcriber import Transcriber

    options = WhisperOptions(**{**whisper, "temperature": tuple(whisper["temperature"])})
    transcriber = Transcriber(model_path, options, candidate["threads"])
    samples = [audio.decode(c).samples for c in clips]
    start.wait()
    started = time.perf_counter()
    streams = (Stream(i, s, budget_s=3600.0) for i, s in enumerate(samples))
    audio_s = sum(s.duration_s for s, _ in transcriber.transcribe_many(streams, candidate["batch_size"]))
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put((elapsed, audio_s, peak_mb))


def measure(candidate: Profile, model_path: str, whisper, clips: list[str]) -> dict[str, Any]:
    """Run `candidate` on `clips`: audio seconds per wall second over all its actors."""
    import dataclasses

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(candidate.actors + 1)
    results = ctx.Queue()
    data = dataclasses.asdict(whisper)
    procs = [
        ctx.Process(target=_worker, args=(model_path, data, candidate.as_dict(), clips, start, results), daemon=True)
        for _ in range(candidate.actors)
    ]
    from pipeline.engine import child_environment, process_env

    with child_environment(process_env(candidate.threads)):  # as an actor of this size would have it
        for p in procs:
            p.start()
    start.wait(timeout=300)
    started = time.perf_counter()
    done = [results.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    audio_s = sum(a for _, a, _ in done)
    return {**candidate.as_dict(), "audio_s": audio_s, "wall_s": wall, "rtfx": audio_s / wall,
            "peak_rss_mb_per_actor": max(m for _, _, m in done)}


def tune(model: str = "tiny.en", folder: Path | None = None, whisper=None) -> dict[str, Any]:
    """Measure every candidate on this node, write the profile, return it."""
    from pipeline import models
    from pipeline.config import WhisperOptions

    whisper = whisper or WhisperOptions(model=model)
    folder = Path(folder or SAMPLE_FOLDER)
    if not folder.is_dir():
        raise FileNotFoundError(f"no sample audio at {folder}; pass --audio FOLDER")
    clips = sample_clips(folder)
    resolved = models.resolve(whisper.model)
    shape = node_shape()
    started = time.perf_counter()
    runs: dict[Profile, list[dict[str, Any]]] = {c: [] for c in candidates(shape["cpus"])}
    for _ in range(ROUNDS):  # interleaved, so that a busy spell hits every candidate
        for candidate, found in runs.items():
            found.append(measure(candidate, resolved.path, whisper, clips))
            logger.info("%d actor(s) x %d thread(s), %d stream(s) each: %.1fx real time",
                        candidate.actors, candidate.threads, candidate.batch_size, found[-1]["rtfx"])
    results = []
    for found in runs.values():
        speeds = [r["rtfx"] for r in found]
        results.append({**found[-1], "rtfx": sum(speeds) / len(speeds), "rtfx_runs": speeds,
                        "peak_rss_mb_per_actor": max(r["peak_rss_mb_per_actor"] for r in found)})
    best = max(results, key=lambda r: r["rtfx"])
    profile = {
        "shape": shape,
        "key": shape_key(shape),
        "best": {k: best[k] for k in BEST_KEYS},
        "model": whisper.model,
        "beam_size": whisper.beam_size,
        "sample": {"folder": str(folder), "files": len(clips)},
        "measurements": results,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tune_s": time.perf_counter() - started,
        "warning": noise_warning(results),
    }
    path = profile_path(shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    profile["path"] = str(path)
    return profile


def noise_warning(results: list[dict[str, Any]]) -> str | None:
    """A warning when repeated measurements of one candidate differ by more than
    NOISE_SHARE, or by more than the best candidate's lead: the choice may be noise."""
    spread = max((max(r["rtfx_runs"]) - min(r["rtfx_runs"])) / max(r["rtfx_runs"]) for r in results)
    ranked = sorted((r["rtfx"] for r in results), reverse=True)
    lead = (ranked[0] - ranked[1]) / ranked[0] if len(ranked) > 1 else 1.0
    if spread <= NOISE_SHARE and spread <= lead:
        return None
    return (f"repeated measurements of one setting differed by up to {spread:.0%} (the best led by {lead:.0%}): "
            "the machine was busy and the choice may be noise; run `bulkscribe tune` again when it is idle")


def format_profile(profile: dict[str, Any]) -> str:
    lines = [f"node: {profile['shape']['cpu_model']}, {profile['shape']['cpus']} CPUs, "
             f"{profile['shape']['memory_gib']} GiB ({profile['model']}, beam {profile.get('beam_size')})",
             f"{'actors':>6} {'threads':>7} {'batch':>5} {'x real time':>12} {'MB per actor':>13}"]
    best = profile["best"]
    for r in profile["measurements"]:
        mark = "  <- best" if all(r[k] == best[k] for k in best) else ""
        lines.append(f"{r['actors']:>6} {r['threads']:>7} {r.get('batch_size') or '-':>5} {r['rtfx']:>12.1f}"
                     f" {r.get('peak_rss_mb_per_actor', 0):>13.0f}{mark}")
    lines.append(f"measured in {profile['tune_s']:.0f} s; profile: {profile.get('path', '')}")
    if profile.get("warning"):
        lines.append(f"warning: {profile['warning']}")
    return "\n".join(lines)

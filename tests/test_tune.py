"""`bulkscribe tune`: real measurements on this node, a profile that `run` then uses."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline import tune
from pipeline.arguments import actor_options, build_parser


def test_candidates_fill_the_node():
    assert [(c.actors, c.threads, c.batch_size) for c in tune.candidates(2)] == [
        (2, 1, b) for b in tune.BATCH_SIZES] + [(1, 2, b) for b in tune.BATCH_SIZES]
    assert {(c.actors, c.threads) for c in tune.candidates(8)} == {(8, 1), (4, 2), (2, 4), (1, 8)}


def test_the_node_shape_names_the_profile():
    shape = tune.node_shape()
    assert shape["cpus"] >= 1 and shape["memory_gib"] >= 1 and shape["cpu_model"]
    key = tune.shape_key(shape)
    assert key == tune.shape_key(dict(shape)) and f"-{shape['cpus']}cpu-" in key
    assert key != tune.shape_key({**shape, "cpus": shape["cpus"] + 1})


@pytest.mark.slow
def test_tune_measures_writes_a_profile_and_run_uses_it(tmp_path, speech_dir, monkeypatch, caplog):
    import logging

    monkeypatch.setenv(tune.PROFILE_DIR_ENV, str(tmp_path / "profiles"))
    sample = tmp_path / "sample"
    sample.mkdir()
    for rel in ("misc/jfk.flac", "misc/LDC93S1.wav", "librispeech/1089-134686-0000.flac"):
        shutil.copy(speech_dir / rel, sample)
    assert tune.load_profile() is None
    profile = tune.tune("tiny.en", sample)
    assert len(profile["measurements"]) == len(tune.candidates(tune.node_shape()["cpus"]))
    best = max(profile["measurements"], key=lambda r: r["rtfx"])
    assert profile["best"] == {k: best[k] for k in ("threads", "actors", "batch_size")}
    assert all(r["rtfx"] > 1 and abs(r["audio_s"] - r["actors"] * 24.36) < 0.5 for r in profile["measurements"])
    saved = json.loads(tune.profile_path().read_text())
    assert saved["best"] == profile["best"] and saved["shape"] == tune.node_shape()
    assert "<- best" in tune.format_profile(profile)

    parse = build_parser().parse_args
    with caplog.at_level(logging.INFO, logger="pipeline.tune"):
        chosen = actor_options(parse(["run", "in", "-o", "out"]))
    assert f"tuning profile {tune.profile_path()}" in caplog.text  # every run says which profile applies
    assert all(len(r["rtfx_runs"]) == tune.ROUNDS for r in profile["measurements"])
    assert (chosen.threads, chosen.actors, chosen.batch_size) == (best["threads"], best["actors"], best["batch_size"])
    forced = actor_options(parse(["run", "in", "-o", "out", "--threads", "2"]))
    assert forced.threads == 2 and forced.actors is None
    # A cluster: each node's actors take that node's own profile (this one's says nothing
    # of them), else 1 thread; flags still apply to every node.
    joined = actor_options(parse(["run", "in", "-o", "out", "--address", "ray://head:10001"]))
    assert joined.per_node and joined.actors is None and joined.threads == 1
    told = actor_options(parse(["run", "in", "-o", "out", "--address", "ray://head:10001", "--threads", "2"]))
    assert not told.per_node and told.threads == 2 and told.actors is None


def test_noisy_measurements_are_reported():
    steady = [{"rtfx": 40.0, "rtfx_runs": [39.0, 41.0]}, {"rtfx": 30.0, "rtfx_runs": [30.0, 30.0]}]
    assert tune.noise_warning(steady) is None
    # What a busy machine gave: one setting measured at 15.4x and 6.7x.
    busy = [{"rtfx": 11.0, "rtfx_runs": [15.4, 6.7]}, {"rtfx": 10.0, "rtfx_runs": [10.0, 10.0]}]
    assert "differed by up to 56%" in tune.noise_warning(busy)
    # Steady, but too close to call.
    close = [{"rtfx": 40.0, "rtfx_runs": [38.0, 42.0]}, {"rtfx": 39.5, "rtfx_runs": [39.5, 39.5]}]
    assert "the best led by 1%" in tune.noise_warning(close)


@pytest.mark.slow
def test_a_node_reads_its_own_profile_never_more_threads_than_its_cpus(ray_cluster):
    """What the pool learns of a node (a task pinned there reads the node's profile):
    the profile's threads and actors, else 1 thread; threads capped at the CPUs Ray
    gives the node (here 2), where a profile measured for the whole machine says more."""
    from pipeline.dispatch import NodeProfile, _NodeProfiles

    ray = ray_cluster
    node = ray.get_runtime_context().get_node_id()

    def learned() -> NodeProfile:
        profiles = _NodeProfiles(default_threads=1)
        profiles.ask(node)
        ref, = profiles.asked
        ray.wait([ref], timeout=120)
        profiles.answer(ref)
        return profiles.known[node]

    assert learned() == NodeProfile(1, None, "no tuning profile")
    path = tune.profile_path()  # the workers share this process's BULKSCRIBE_PROFILE_DIR
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(json.dumps({"best": {"threads": 2, "actors": 1}, "measured_at": "by the test"}))
        profile = learned()
        assert (profile.threads, profile.actors) == (2, 1) and str(path) in profile.source
        path.write_text(json.dumps({"best": {"threads": 4, "actors": 1}, "measured_at": "by the test"}))
        profile = learned()
        assert (profile.threads, profile.actors) == (2, None) and "more than the node's 2 CPU(s)" in profile.source
    finally:
        path.unlink(missing_ok=True)

import dataclasses

import pytest

from pipeline.config import ActorOptions, JobSpec, WhisperOptions, fingerprint, fingerprint_fields


def test_defaults_are_valid():
    o = WhisperOptions()
    # faster-whisper's own defaults but beam 3 (its WER per category is in bench/README.md).
    assert (o.model, o.compute_type, o.beam_size, o.vad, o.temperature) == (
        "tiny.en", "int8", 3, False, (0.0, 0.2, 0.4, 0.6, 0.8, 1.0))
    assert ActorOptions().threads == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size must be >= 1, got 0"),
        ({"compute_type": "int4"}, "compute_type must be one of"),
        ({"task": "summarise"}, "task must be one of"),
        ({"language": "english"}, "language must be a language code"),
        ({"temperature": (0.0, 1.5)}, "temperature must be"),
        ({"unit_no_speech_threshold": 0.0}, "unit_no_speech_threshold"),
        ({"unit_logprob_threshold": 0.1}, "unit_logprob_threshold must be < 0"),
        ({"model": ""}, "model must be"),
    ],
)
def test_whisper_options_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WhisperOptions(**kwargs)


def test_actor_and_job_options_reject_bad_values():
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        ActorOptions(threads=0)
    with pytest.raises(ValueError, match="actors must be >= 1"):
        ActorOptions(actors=0)
    with pytest.raises(ValueError, match="at least one input"):
        JobSpec(inputs=(), output="/tmp/x")
    with pytest.raises(ValueError, match="shard_audio_s"):
        JobSpec(inputs=("a",), output="/tmp/x", shard_audio_s=0)


def test_public_dict_leaves_out_storage_options():
    spec = JobSpec(inputs=["s3://b/a.wav"], output="s3://b/out", storage_options={"secret": "hunter2"})
    data = spec.public_dict()
    assert "storage_options" not in data
    assert "hunter2" not in repr(data)
    assert data["inputs"] == ["s3://b/a.wav"]


def test_fingerprint_changes_with_every_transcript_option_and_the_model():
    base = fingerprint(fingerprint_fields(WhisperOptions(), "sha-a"))
    assert base == fingerprint(fingerprint_fields(WhisperOptions(), "sha-a"))
    variants = [
        WhisperOptions(beam_size=1),
        WhisperOptions(language="en"),
        WhisperOptions(vad=True),
        WhisperOptions(word_timestamps=True),
        WhisperOptions(compute_type="float32"),
        WhisperOptions(temperature=(0.0,)),
        WhisperOptions(task="translate"),
    ]
    prints = {fingerprint(fingerprint_fields(v, "sha-a")) for v in variants}
    assert len(prints) == len(variants) and base not in prints
    assert fingerprint(fingerprint_fields(WhisperOptions(), "sha-b")) != base


def test_the_pool_is_elastic_unless_actors_are_given():
    from pipeline.config import ActorOptions, PoolSize

    # One actor per `threads` CPUs present to start with, up to one per shard as nodes join.
    assert ActorOptions(threads=2).pool(cpus=8, shards=100) == PoolSize(1, 4, 100)
    assert ActorOptions().pool(cpus=8, shards=3) == PoolSize(1, 3, 3)
    # No worker yet: one actor asked for, which is what makes an autoscaler launch a node.
    assert ActorOptions().pool(cpus=0, shards=10) == PoolSize(1, 1, 10)
    assert ActorOptions().pool(cpus=0, shards=10).elastic
    fixed = ActorOptions(actors=3).pool(cpus=64, shards=10)
    assert fixed == PoolSize(3, 3, 3) and not fixed.elastic
    assert ActorOptions(actors=3).pool(cpus=64, shards=2) == PoolSize(2, 2, 2)
    # A Ray started for the job: no node can join, so nothing to grow onto.
    assert ActorOptions(threads=2).pool(cpus=8, shards=100, nodes_join=False) == PoolSize(4, 4, 4)
    assert ActorOptions().pool(cpus=8, shards=3, nodes_join=False) == PoolSize(3, 3, 3)


def test_importing_the_package_loads_neither_pyarrow_nor_ray():
    import subprocess
    import sys

    code = "import sys, pipeline; print(sorted(m for m in ('pyarrow', 'ray', 'duckdb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pipeline_run_stays_the_function_once_the_job_module_is_imported():
    import importlib

    import pipeline

    importlib.import_module("pipeline.job")
    assert callable(pipeline.run) and pipeline.run.__module__ == "pipeline"


def test_a_rerun_takes_the_folders_options_where_none_is_given():
    from pipeline.resume import with_folder_options
    from pipeline.records import JobRecord

    made_with = WhisperOptions(beam_size=5, word_timestamps=True)
    fields = fingerprint_fields(made_with, "sha")
    job = JobRecord(output="out", created_at="", spec={}, fingerprint=fingerprint(fields),
                    fingerprint_fields=fields, model={}, shard_audio_s=60)
    # From the command line: only --word-timestamps given, and differently.
    rerun = JobSpec(inputs=("in",), output="out", whisper=WhisperOptions(word_timestamps=False),
                    whisper_given=frozenset({"word_timestamps"}))
    followed = with_folder_options(rerun, job).whisper
    assert (followed.beam_size, followed.word_timestamps) == (5, False)
    assert fingerprint(fingerprint_fields(followed, "sha")) != job.fingerprint  # so it is refused
    # Nothing given: the folder's options, so the rerun is accepted.
    open_rerun = dataclasses.replace(rerun, whisper=WhisperOptions(), whisper_given=frozenset())
    assert fingerprint(fingerprint_fields(with_folder_options(open_rerun, job).whisper, "sha")) == job.fingerprint
    # The Python API names every option unless told otherwise: nothing is taken over.
    api = dataclasses.replace(rerun, whisper=WhisperOptions(), whisper_given=None)
    assert with_folder_options(api, job).whisper == WhisperOptions()
    # A folder of a new job: the defaults.
    assert with_folder_options(open_rerun, None).whisper == WhisperOptions()


def test_mixing_down_keeps_the_fingerprint_and_splitting_channels_changes_it():
    mixed = fingerprint_fields(WhisperOptions(), "sha")
    assert "channels" not in mixed  # folders made before the option: their fingerprint stays
    split = fingerprint_fields(WhisperOptions(channels="split"), "sha")
    assert split["channels"] == "split" and fingerprint(split) != fingerprint(mixed)
    with pytest.raises(ValueError, match="channels must be one of mix, split"):
        WhisperOptions(channels="stereo")


def test_folders_made_before_routing_keep_their_fingerprint_and_flag():
    from pipeline.records import JobRecord
    from pipeline.resume import folder_options

    old_fields = dataclasses.asdict(WhisperOptions())
    old_fields.pop("other_languages")  # what an older bulkscribe recorded
    old_fields.pop("channels")
    old_fields["temperature"] = list(old_fields["temperature"])
    old_fields["model_sha256"] = "sha"
    job = JobRecord(output="out", created_at="", spec={}, fingerprint=fingerprint(old_fields),
                    fingerprint_fields=old_fields, model={}, shard_audio_s=60)
    options = folder_options(job)
    assert options.other_languages == "flag"
    assert fingerprint(fingerprint_fields(options, "sha")) == job.fingerprint
    routed = fingerprint(fingerprint_fields(WhisperOptions(), "sha", "base-sha"))
    assert routed != job.fingerprint
    assert routed != fingerprint(fingerprint_fields(WhisperOptions(), "sha", "other-base-sha"))


def test_routing_is_settled_from_the_model_the_language_and_what_is_installed(monkeypatch):
    from pipeline import models
    from pipeline.languages import settle_other_languages

    installed = {"tiny.en", "base"}

    def resolve(name):
        if name not in installed:
            raise models.ModelError(f"{name} is not installed: pip install ...")
        return models.ResolvedModel(name=name, path=name, sha256=f"sha-{name}", pinned={})

    monkeypatch.setattr(models, "resolve", resolve)
    monkeypatch.setattr(models, "is_multilingual", lambda path: path != "tiny.en")
    english = resolve("tiny.en")

    def settled(whisper=WhisperOptions(), given=frozenset(), job=None, check="base"):
        spec = JobSpec(inputs=("in",), output="out", whisper=whisper, whisper_given=given, language_check=check)
        return settle_other_languages(spec, english if whisper.model == "tiny.en" else resolve(whisper.model),
                                      job).whisper.other_languages

    assert settled() == "route"
    assert settled(WhisperOptions(language="en")) == "flag"  # a forced language: nothing to route
    assert settled(WhisperOptions(model="base")) == "flag"  # a multilingual model: nothing to route
    assert settled(check=None) == "flag"
    assert settled(WhisperOptions(other_languages="flag"), frozenset({"other_languages"})) == "flag"
    installed.remove("base")
    assert settled() == "flag"  # a new folder by default: flag, with the install command in the log
    with pytest.raises(models.ModelError, match="routed to base"):
        settled(WhisperOptions(other_languages="route"), frozenset({"other_languages"}))
    with pytest.raises(models.ModelError, match="routed to base"):
        settled(job=object())  # a folder that routes cannot go on without its model

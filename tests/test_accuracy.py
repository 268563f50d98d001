"""The accuracy corpus (tests/corpus.py) through a real run: real model, real Ray.

What an archive needs of every file: its speech transcribed to the end, whatever the
channel, level or bandwidth; files in other languages transcribed in their own language; nothing invented over
music, noise or silence; and the same text for the same file whatever ran beside it.
"""

from __future__ import annotations

import shutil

import pytest

from tests.wer import simple_normalize, wer
from tests import corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def accuracy_run(ray_cluster, tmp_path_factory):
    """Every corpus item in one run, as files of one input folder; their rows by item."""
    from pipeline.config import JobSpec
    from pipeline.query import open_output
    from pipeline.job import run

    root = tmp_path_factory.mktemp("accuracy")
    items = corpus.build(root / "built")
    src = root / "in"
    src.mkdir()
    named = {}
    for n, item in enumerate(items):
        copy = src / f"{n:02d}-{item.category}-{item.path.name}"
        shutil.copy(item.path, copy)
        named[copy.name] = item
    out = root / "out"
    run(JobSpec(inputs=(str(src),), output=str(out), progress=False, shard_audio_s=60))
    views = open_output(str(out))
    files = {r["uri"].rsplit("/", 1)[1]: r for r in views.files.to_table().to_pylist()}
    segments = views.segments.to_table().sort_by([("uri", "ascending"), ("segment", "ascending")]).to_pylist()
    texts = {name: " ".join(s["text"] for s in segments if s["uri"].endswith("/" + name)) for name in files}
    return named, files, texts, segments


def _by_category(accuracy_run, *categories):
    named, _, texts, _ = accuracy_run
    chosen = [(name, item) for name, item in named.items() if item.category in categories]
    assert chosen, f"no corpus item in {categories}"
    return [item.reference for _, item in chosen], [texts[name] for name, _ in chosen], [name for name, _ in chosen]


@pytest.mark.parametrize("category, bar", [
    ("read", 0.10), ("telephone", 0.05), ("quiet", 0.10), ("whispered", 0.12), ("stereo", 0.08), ("edge", 0.10),
    ("long", 0.12), ("accented", 0.20),
])
def test_english_speech_of_every_kind_is_transcribed(accuracy_run, category, bar):
    refs, hyps, names = _by_category(accuracy_run, category)
    assert wer(refs, hyps) <= bar, list(zip(names, hyps))


def test_both_speakers_of_a_stereo_call_are_transcribed(accuracy_run):
    named, files, texts, _ = accuracy_run
    for name, item in named.items():
        if item.category == "stereo":
            # Each speaker says a third of the words or more: losing one costs far more than 15%.
            assert files[name]["status"] == "ok" and wer([item.reference], [texts[name]]) <= 0.15, texts[name]


def test_speech_that_ends_with_the_file_keeps_its_last_words(accuracy_run):
    named, _, texts, _ = accuracy_run
    for name, item in named.items():
        if item.category == "edge":
            last = simple_normalize(item.reference).split()[-1]
            assert simple_normalize(texts[name]).split()[-1:] == [last], (name, texts[name])


def test_real_speech_is_never_no_speech_and_english_is_never_flagged(accuracy_run):
    named, files, _, _ = accuracy_run
    for name, item in named.items():
        row = files[name]
        if item.category not in ("no_speech",):
            assert row["status"] == "ok", (name, row["status"], row["error_message"])
        if item.language == "en" and item.category not in ("short", "accented"):
            assert row["flags"] == [], (name, row["flags"])


def test_speech_in_other_languages_is_transcribed_in_its_own_language_and_english_stays(accuracy_run):
    named, files, _, _ = accuracy_run
    for name, item in named.items():
        row = files[name]
        if item.category == "other_language":
            assert (row["model"], row["language"]) == ("base", item.language), (name, row["model"], row["language"])
        elif item.language == "en":
            assert row["model"] == "tiny.en", (name, row["model"])  # no English file routed


def test_nothing_unflagged_is_made_up_over_music_noise_and_silence(accuracy_run):
    named, files, texts, _ = accuracy_run
    for name, item in named.items():
        if item.category == "no_speech":
            row = files[name]
            assert row["status"] == "no_speech" or row["flags"], (name, texts[name])


def test_segments_stay_inside_their_file_in_order(accuracy_run):
    _, files, _, segments = accuracy_run
    by_uri = {r["uri"]: r for r in files.values()}
    last_end: dict[str, float] = {}
    for s in segments:
        row = by_uri[s["uri"]]
        # Times and durations are both rounded to the millisecond.
        assert 0 <= s["start"] <= s["end"] <= row["duration_s"], s
        assert s["start"] >= last_end.get(s["uri"], 0.0), s
        last_end[s["uri"]] = s["end"]
    assert segments


def test_the_wer_oracle_notices_a_broken_transcript(accuracy_run):
    refs, hyps, _ = _by_category(accuracy_run, "read")
    assert wer(refs, hyps) <= 0.10
    # Each transcript given to the next clip: the bar must fail.
    assert wer(refs, hyps[1:] + hyps[:1]) > 0.5
    # The last word of every file dropped: the edge check must notice.
    assert any(simple_normalize(h).split()[-1:] != simple_normalize(r).split()[-1:]
               for r, h in zip(refs, [" ".join(h.split()[:-1]) for h in hyps]))


def test_the_whispered_items_have_no_voice_left(tmp_path):
    from tests.corpus import build, decode, read_clips, voicing

    whispered = [i for i in build(tmp_path) if i.category == "whispered"]
    assert len(whispered) == 4
    originals = {c.path.stem: c for c in read_clips()}
    for item in whispered:
        original = decode(originals[item.path.stem.removeprefix("whispered-")].path)
        assert voicing(decode(item.path)) < 0.3 < voicing(original) - 0.05, item.path.name

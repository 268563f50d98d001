"""Several streams on one model: only decoder calls are shared, never text.

The lockstep itself is tested with a fake decoder (who waits for whom, what a round
holds); the real model shows that a file's transcript is the one it has alone whatever
streams run beside it, in any order, at any batch size and under load, with the
temperature fallback and word timestamps, and that a stream that fails fails alone.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import audio
from pipeline.config import WhisperOptions
from pipeline.streams import Call, Lockstep, NeedsFallback, Stream, run_streams
from pipeline.transcriber import Transcriber, UnitTimeout, _run_round

DATA = Path(__file__).parent / "data"


def _fake_streams(lengths: list[int]) -> list[Stream]:
    return [Stream(tag=f"s{i}", samples=np.zeros(16_000 * n, np.float32), budget_s=60.0)
            for i, n in enumerate(lengths)]


def test_a_round_holds_one_call_of_every_live_stream_whatever_the_timing():
    """Streams of 1-4 'windows' each, 3 slots, random delays between calls: every round
    is made of the same streams' calls as without delays (content, not timing)."""
    def rounds_of(delays: bool, seed: int) -> list[list[tuple[str, int]]]:
        rng = random.Random(seed)
        made: list[list[tuple[str, int]]] = []

        def run_round(calls: list[Call]) -> None:
            made.append(sorted((c.args[0], c.args[1]) for c in calls))
            for c in calls:
                c.result = c.args

        def first_pass(stream: Stream, deadline: float, lockstep: Lockstep, order: int):
            for window in range(int(stream.duration_s)):
                if delays:
                    time.sleep(rng.random() / 200)
                lockstep.call(Call(order, "same", (stream.tag, window)))
            return stream.tag

        found = list(run_streams(_fake_streams([3, 1, 4, 2, 2, 1, 3]), 3, first_pass=first_pass,
                                 alone=lambda s, d: None, run_round=run_round))
        assert sorted(o for _, o in found) == sorted(f"s{i}" for i in range(7))
        return made

    steady = rounds_of(False, 0)
    # s0, s1, s2 start; s1 ends after one window and s3 takes its slot, and so on.
    assert steady[0] == [("s0", 0), ("s1", 0), ("s2", 0)]
    assert steady[1] == [("s0", 1), ("s2", 1), ("s3", 0)]
    assert sum(len(r) for r in steady) == 3 + 1 + 4 + 2 + 2 + 1 + 3
    for seed in range(3):
        assert rounds_of(True, seed) == steady


def test_fallback_streams_leave_their_slot_and_errors_stay_with_their_stream():
    calls_in_rounds: list[int] = []

    def run_round(calls: list[Call]) -> None:
        calls_in_rounds.append(len(calls))
        for c in calls:
            c.result = c.args

    def first_pass(stream: Stream, deadline: float, lockstep: Lockstep, order: int):
        lockstep.call(Call(order, "k", stream.tag))
        if stream.tag == "s1":
            raise NeedsFallback
        if stream.tag == "s2":
            raise RuntimeError("bad input")
        return "first"

    found = dict((s.tag, o) for s, o in run_streams(_fake_streams([1, 1, 1, 1]), 2, first_pass=first_pass,
                                                   alone=lambda s, d: "alone", run_round=run_round))
    assert found["s0"] == "first" and found["s3"] == "first" and found["s1"] == "alone"
    assert isinstance(found["s2"], RuntimeError)
    assert calls_in_rounds == [2, 2]


def test_a_bug_while_taking_the_next_stream_is_raised():
    def streams():
        yield from _fake_streams([1])
        raise KeyError("a bug")

    def first_pass(stream, deadline, lockstep, order):
        return lockstep.call(Call(order, "k", stream.tag))

    def run_round(calls):
        for c in calls:
            c.result = c.args

    with pytest.raises(KeyError):
        list(run_streams(streams(), 2, first_pass=first_pass, alone=lambda s, d: None, run_round=run_round))


def test_a_call_that_fails_in_a_batch_is_made_again_alone():
    class Model:
        def __init__(self):
            self.batches = []

        def generate(self, encoded, prompts, **options):
            self.batches.append(len(prompts))
            if [9] in prompts:
                raise ValueError("this prompt is refused")
            return [p[0] * 10 for p in prompts]

    model = Model()
    features = np.zeros((1, 4, 2), np.float32)
    calls = [Call(i, "k", (features, [p], {})) for i, p in enumerate([1, 9, 3])]
    _run_round(model, calls)
    assert [c.result for c in calls] == [10, None, 30]
    assert isinstance(calls[1].error, ValueError) and calls[0].error is None
    assert model.batches == [3, 1, 1, 1]


# Real clips with distinct words, a long file (several windows, so prompts of several
# lengths), and files that make tiny.en fall back to sampling (music, Russian).
FILES = [
    DATA / "speech" / "misc" / "jfk.flac",
    DATA / "speech" / "misc" / "LDC93S1.wav",
    DATA / "speech" / "librispeech" / "1089-134686-0000.flac",
    DATA / "speech" / "librispeech" / "1089-134686-0001.flac",
    DATA / "hard" / "short" / "one_two_three.wav",
    DATA / "hard" / "accented" / "audiomnist_9_42_10.wav",
    DATA / "speech" / "variants" / "big_buck_bunny_small.mp4",
    DATA / "hard" / "telephone" / "ru_agent-newlocation.wav",
]


@pytest.fixture(scope="module")
def clips():
    found = {p.name: audio.decode(str(p)).samples for p in FILES}
    # Three minutes of speech in one file: the clips of the speech folder joined.
    speech = sorted((DATA / "speech" / "librispeech").iterdir())
    joined, n = [], 0
    for p in speech:
        s = audio.decode(str(p)).samples
        joined += [s, np.zeros(8_000, np.float32)]
        n += len(s)
        if n > 180 * 16_000:
            break
    found["joined"] = np.concatenate(joined)
    return found


def _many(transcriber: Transcriber, clips: dict, names: list[str], width: int) -> dict:
    streams = (Stream(name, clips[name], budget_s=3600.0) for name in names)
    found = {}
    for stream, outcome in transcriber.transcribe_many(streams, width):
        assert not isinstance(outcome, Exception), (stream.tag, outcome)
        found[stream.tag] = outcome
    return found


@pytest.mark.slow
def test_the_same_transcript_whatever_the_streams_beside_it_their_order_batch_and_load(tiny_model, clips):
    options = WhisperOptions()
    alone = Transcriber(tiny_model.path, options, cpu_threads=1)
    expected = {name: alone.transcribe(samples) for name, samples in clips.items()}
    assert alone.resampled >= 2, "no file fell back to sampling: the test would show nothing"
    assert len(expected["joined"].segments) > 10  # several windows: prompts of many lengths

    names = list(clips)
    rng = random.Random(3)
    stop = threading.Event()

    def load() -> None:  # a busy machine: another thread burning CPU
        while not stop.is_set():
            np.linalg.svd(np.random.default_rng(0).random((200, 200)))

    hog = threading.Thread(target=load, daemon=True)
    hog.start()
    try:
        for width in (8, 3, 2):
            order = names[:]
            rng.shuffle(order)
            batched = Transcriber(tiny_model.path, options, cpu_threads=1)
            found = _many(batched, clips, order, width)
            assert found == expected, width
            assert batched.resampled == alone.resampled
    finally:
        stop.set()
        hog.join()
    # One file beside copies of others: its text holds none of theirs.
    words = {name: set(" ".join(s.text for s in t.segments).lower().split()) for name, t in expected.items()}
    assert "country" in words["jfk.flac"] and "greasy" in words["LDC93S1.wav"]
    assert not {"country", "greasy"} & (words["joined"] | words["one_two_three.wav"])


@pytest.mark.slow
def test_word_timestamps_and_beam_1_in_batched_streams(tiny_model, clips):
    options = WhisperOptions(word_timestamps=True, beam_size=1)
    alone = Transcriber(tiny_model.path, options, cpu_threads=1)
    names = ["jfk.flac", "LDC93S1.wav", "joined", "1089-134686-0000.flac", "big_buck_bunny_small.mp4"]
    expected = {name: alone.transcribe(clips[name]) for name in names}
    assert all(s.words for s in expected["jfk.flac"].segments)
    assert _many(Transcriber(tiny_model.path, options, cpu_threads=1), clips, names, 4) == expected


@pytest.mark.slow
def test_a_stream_over_its_time_limit_fails_alone(tiny_model, clips):
    options = WhisperOptions()
    alone = Transcriber(tiny_model.path, options, cpu_threads=1)
    names = ["jfk.flac", "LDC93S1.wav", "joined"]
    expected = {name: alone.transcribe(clips[name]) for name in names if name != "joined"}
    streams = [Stream(name, clips[name], budget_s=0.01 if name == "joined" else 3600.0) for name in names]
    found = {s.tag: o for s, o in Transcriber(tiny_model.path, options, cpu_threads=1).transcribe_many(streams, 3)}
    assert isinstance(found.pop("joined"), UnitTimeout)
    assert found == expected

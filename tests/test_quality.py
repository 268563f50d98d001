"""The rules that decide `no_speech` and the `flags` of a transcript, on made-up segments."""

from pathlib import Path

from pipeline import quality
from pipeline.config import WhisperOptions
from pipeline.transcriber import Segment, Transcript


def _segment(text, start=0.0, end=2.0, logprob=-0.3, no_speech=0.05, temperature=0.0):
    return Segment(start, end, text, logprob, no_speech, 1.3, temperature)


def _transcript(*segments):
    return Transcript(tuple(segments), "en", 1.0, 30.0)


def test_loops_are_repetitive_and_speech_is_not():
    # What tiny.en wrote over Spanish, Russian and Japanese speech:
    assert quality.is_repetitive(["We are going to see the same thing."] * 8)
    assert quality.is_repetitive(["the the the the the the the the the"])
    assert quality.is_repetitive(["Mmm... Mmm... Mmm... Mmm... Mmm... Mmm... Mmm... Mmm..."])
    assert quality.is_repetitive(["So I said that", "I am going to show you a lot of friends.",
                                  "I am going to show you a lot of friends.", "I am going to show you a lot of friends."])
    assert not quality.is_repetitive(["No, no, no.", "I said no."])
    assert not quality.is_repetitive(["And so my fellow Americans, ask not what your country can do for you,",
                                      "ask what you can do for your country."])
    assert not quality.is_repetitive(["Yes.", "Yes.", "Okay, yes."])


def test_a_long_text_that_comes_back_to_its_passages_is_no_loop_but_a_loop_inside_it_is():
    import csv

    with open(Path(__file__).parent / "data" / "speech" / "manifest.csv", newline="", encoding="utf-8") as f:
        sentences = [r["reference_text"] for r in csv.DictReader(f) if r["reference_text"]]
    # A lecture or a radio hour that returns to what it said: the whole text compresses
    # like a loop (a ratio over 3), each window's text does not.
    reading = sentences * 4
    assert len(" ".join(reading)) > 5000
    assert not quality.is_repetitive(reading)
    middle = len(reading) // 2
    assert quality.is_repetitive(reading[:middle] + ["We are going to see the same thing."] * 8 + reading[middle:])


def test_flags_name_each_reason_and_only_those():
    ok = _transcript(_segment("He hoped there would be stew for dinner."), _segment("Turnips and carrots.", 2, 4))
    assert quality.flags(ok) == ()
    loop = _transcript(*[_segment("We are going to see the same thing.", i, i + 1) for i in range(6)])
    assert quality.flags(loop) == (quality.REPETITION,)
    unsure = _transcript(_segment("Spicy butt.", logprob=-1.4))
    assert quality.flags(unsure) == (quality.LOW_CONFIDENCE,)
    assert quality.flags(_transcript()) == ()


def test_the_language_is_checked_only_for_doubtful_transcripts():
    asked = []

    def russian():
        asked.append(1)
        return {"ru": 0.97, "en": 0.001}

    confident = _transcript(_segment("He hoped there would be stew for dinner.", logprob=-0.3))
    assert quality.flags(confident, languages=russian) == () and not asked
    doubtful = _transcript(_segment("A vegetarian or military consistency.", logprob=-0.8))
    assert quality.flags(doubtful, languages=russian) == (quality.LANGUAGE_MISMATCH,) and asked
    english = lambda: {"en": 0.55, "de": 0.2}  # noqa: E731 (an accented single word)
    assert quality.flags(doubtful, languages=english) == ()
    both = _transcript(_segment("Spicy butt.", logprob=-1.5))
    assert quality.flags(both, languages=russian) == (quality.LOW_CONFIDENCE, quality.LANGUAGE_MISMATCH)


def test_long_confident_segments_outweigh_a_short_unsure_one():
    segments = [_segment("Mm.", 0.0, 0.2, logprob=-1.8), _segment("A long confident sentence here.", 0.2, 8.0, logprob=-0.2)]
    assert -0.3 < quality.mean_logprob(segments) < -0.2


def test_no_speech_needs_both_signals_on_every_segment():
    options = WhisperOptions()
    # Inventions over music and noise: high no_speech_prob with low confidence or a fallback.
    assert quality.is_no_speech([_segment("Mm-hmm.", no_speech=0.59, logprob=-0.96)], options)
    assert quality.is_no_speech([_segment("Woohoo!", no_speech=0.55, logprob=-0.67, temperature=0.4)] * 2, options)
    assert quality.is_no_speech([], options)
    # Clear LibriVox speech with a high no_speech_prob, decoded confidently at T=0.
    assert not quality.is_no_speech([_segment("a", no_speech=0.51, logprob=-0.27), _segment("b", no_speech=0.86, logprob=-0.56)], options)
    # One speech segment is enough.
    assert not quality.is_no_speech([_segment("a", no_speech=0.61, logprob=-1.2), _segment("b", no_speech=0.07)], options)

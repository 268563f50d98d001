from pathlib import Path

import pytest

from pipeline import audio
from tests.wer import simple_normalize

HARD = Path(__file__).parent / "data" / "hard"


def test_real_model_transcribes_jfk(transcriber, speech_dir):
    transcript = transcriber.transcribe(audio.decode(str(speech_dir / "misc" / "jfk.flac")).samples)
    text = simple_normalize(" ".join(s.text for s in transcript.segments))
    assert "ask not what your country can do for you" in text
    assert transcript.language == "en"
    assert abs(transcript.duration_s - 11.0) < 0.05
    starts = [s.start for s in transcript.segments]
    assert starts == sorted(starts) and all(s.end > s.start for s in transcript.segments)
    assert all(-2.0 < s.avg_logprob < 0 and 0 <= s.no_speech_prob < 0.5 for s in transcript.segments)
    assert all(s.words is None for s in transcript.segments)


def test_word_timestamps(tiny_model, speech_dir):
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    t = Transcriber(tiny_model.path, WhisperOptions(word_timestamps=True, beam_size=1), cpu_threads=1)
    transcript = t.transcribe(audio.decode(str(speech_dir / "misc" / "LDC93S1.wav")).samples)
    words = [w for s in transcript.segments for w in s.words]
    assert len(words) >= 8
    assert all(0 <= w.start <= w.end <= 3.0 and 0 < w.probability <= 1 for w in words)


def test_noise_gives_no_segments_with_vad(tiny_model, speech_dir):
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    t = Transcriber(tiny_model.path, WhisperOptions(vad=True), cpu_threads=1)
    assert t.transcribe(audio.decode(str(speech_dir / "misc" / "empty_noise.wav")).samples).segments == ()


def test_sampled_fallbacks_are_repeatable_across_runs_threads_and_what_came_before(tiny_model, speech_dir):
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    # Over this video's music and over Russian speech tiny.en falls back to sampling.
    video = audio.decode(str(speech_dir / "variants" / "big_buck_bunny_small.mp4")).samples
    russian = audio.decode(str(HARD / "telephone" / "ru_agent-newlocation.wav")).samples
    runs = []
    for threads, before in ((1, None), (1, None), (2, None), (1, russian)):
        t = Transcriber(tiny_model.path, WhisperOptions(), cpu_threads=threads)
        if before is not None:
            t.transcribe(before)  # moves the sampler's state along, unless each file reseeds it
        transcript = t.transcribe(video)
        assert all(s.start < transcript.duration_s and s.start <= s.end <= transcript.duration_s
                   for s in transcript.segments)
        runs.append([(s.start, s.end, s.text, s.temperature, s.avg_logprob) for s in transcript.segments])
    assert any(temperature > 0 for *_, temperature, _ in runs[0]), "no segment was sampled: the test shows nothing"
    assert runs[0] == runs[1] == runs[2] == runs[3]


def test_a_file_is_transcribed_to_its_end(transcriber, speech_dir):
    # The recording stops 0.3 s after its last word ("...on the left").
    samples = audio.decode(str(speech_dir / "librispeech" / "61-70968-0000.flac")).samples
    from tests.corpus import speech_end

    cut = samples[: speech_end(samples) + int(0.3 * audio.SAMPLE_RATE)]
    text = simple_normalize(" ".join(s.text for s in transcriber.transcribe(cut).segments))
    assert text.endswith("on the left")


@pytest.fixture(scope="module")
def language_checking(tiny_model):
    from pipeline import models
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    return Transcriber(tiny_model.path, WhisperOptions(), cpu_threads=1, language_id_path=models.resolve("base").path)


def test_the_language_model_names_english_and_other_languages(language_checking, speech_dir):
    assert language_checking.checks_language
    english = language_checking.languages(audio.decode(str(speech_dir / "misc" / "LDC93S1.wav")).samples)
    assert max(english, key=english.get) == "en"
    russian = language_checking.languages(audio.decode(str(HARD / "short" / "ru_conf-getconfno.wav")).samples)
    chinese = language_checking.languages(audio.decode(str(HARD / "multilingual" / "zh_chinese.flac")).samples)
    assert max(russian, key=russian.get) == "ru" and russian["en"] < 0.1
    assert max(chinese, key=chinese.get) == "zh" and chinese["en"] < 0.1


def test_a_multilingual_model_needs_no_language_check(speech_dir):
    from pipeline import models
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    base = models.resolve("base").path
    assert not Transcriber(base, WhisperOptions(model="base"), cpu_threads=1, language_id_path=base).checks_language

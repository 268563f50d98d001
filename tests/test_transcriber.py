from pipeline import audio
from pipeline.evaluate import simple_normalize


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


def test_segments_never_pass_the_end_and_sampling_is_repeatable(tiny_model, speech_dir):
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    # Over this video's music the decoder falls back to sampling and invents timestamps.
    samples = audio.decode(str(speech_dir / "variants" / "big_buck_bunny_small.mp4")).samples
    runs = []
    for threads in (1, 1, 2):
        t = Transcriber(tiny_model.path, WhisperOptions(), cpu_threads=threads)
        transcript = t.transcribe(samples)
        assert all(s.start < transcript.duration_s and s.end <= transcript.duration_s for s in transcript.segments)
        runs.append([(s.start, s.end, s.text, s.temperature) for s in transcript.segments])
    assert runs[0] == runs[1]

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
        t = Transcriber(tiny_model.path, WhisperOptions(engine="sequential", beam_size=5), cpu_threads=threads)
        transcript = t.transcribe(samples)
        assert all(s.start < transcript.duration_s and s.end <= transcript.duration_s for s in transcript.segments)
        runs.append([(s.start, s.end, s.text, s.temperature) for s in transcript.segments])
    assert runs[0] == runs[1]


def test_short_clips_of_several_files_share_windows_and_keep_their_own_words(transcriber, speech_dir, references):
    from pipeline.evaluate import wer

    names = ["misc/jfk.flac", "misc/LDC93S1.wav", "librispeech/1089-134691-0000.flac",
             "librispeech/61-70968-0000.flac", "librispeech/1272-128104-0000.wav", "misc/empty_noise.wav"]
    clips = [audio.decode(str(speech_dir / n)).samples for n in names]
    together = transcriber.transcribe_many(clips)
    alone = [transcriber.transcribe(c) for c in clips]
    for name, clip, t in zip(names, clips, together):
        assert t.duration_s == len(clip) / 16000
        assert all(0 <= s.start <= s.end <= t.duration_s for s in t.segments), name
    texts = [" ".join(s.text for s in t.segments) for t in together]
    refs = [references.get(n, "") for n in names[:5]]
    # Packed, the words stay with their file: as accurate as one file at a time, and no
    # file holds another's words.
    assert wer(refs, texts[:5]) <= wer(refs, [" ".join(s.text for s in t.segments) for t in alone[:5]]) + 0.03
    assert wer(refs, texts[:5]) < 0.08
    assert "country" in simple_normalize(texts[0]) and "country" not in simple_normalize(" ".join(texts[1:]))
    assert together[5].segments == ()  # noise: VAD finds no speech


def test_uncovered_stretches_of_a_span_are_found():
    from pipeline.transcriber import Segment, _gaps, _Piece

    piece = _Piece(item=0, window_start=4.0, window_end=24.0, source_start=100.0)  # source 100-120 s
    seg = lambda a, b: Segment(a, b, "x", -0.2, 0.01, 1.2, 0.0)  # noqa: E731
    assert _gaps(piece, [seg(100.0, 108.0), seg(108.0, 119.5)]) == [(119.5, 120.0)]
    # The decoder stopped early (no segment past 111 s) and jumped over 102-105 s:
    assert _gaps(piece, [seg(99.0, 102.0), seg(105.0, 111.0), seg(130.0, 131.0)]) == [(102.0, 105.0), (111.0, 120.0)]


def test_the_sequential_engine_still_works(tiny_model, speech_dir):
    from pipeline.config import WhisperOptions
    from pipeline.transcriber import Transcriber

    t = Transcriber(tiny_model.path, WhisperOptions(engine="sequential", beam_size=5), cpu_threads=1)
    transcript = t.transcribe(audio.decode(str(speech_dir / "misc" / "jfk.flac")).samples)
    assert "ask not what your country can do for you" in simple_normalize(" ".join(s.text for s in transcript.segments))

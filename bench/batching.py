"""Would batching windows of different files in one CTranslate2 call make bulkscribe faster?

Each file is decoded alone, so its text depends on nothing else. Windows of different
files could still share one `encode` and one `generate` call, each row its own file's
window and prompt, if CTranslate2 gives every row the same result whatever the rows
beside it. This bench checks that on real clips (encoder outputs and beam-5 tokens and
scores compared bit for bit, one row alone against the same row in a batch) and then
times the same work one row at a time and in batches, side by side in one process.

    python bench/batching.py [--threads 1] [--clips 8]

Its answer on 2 cores, tiny.en int8, one thread (what each actor has): rows are
batch-invariant bit for bit when prompts have the same length (CTranslate2 refuses
prompts of different lengths in one batch), and the batched encoder is no faster than
one window a call. The decoder is what batching buys back: 8 windows of long-form speech
in one `generate` call took 1.40x less time than 8 calls at beam 3 and 1.60x at beam 1
with the 225-token prompts of running speech, 1.78x and 2.50x with the one-token prompt
of a file's first window (tokens and scores identical, 8 of 8). So an actor transcribes
several files at once and batches only their decoder calls (`pipeline.streams`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "tests" / "data" / "speech" / "librispeech"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.tokenizer import Tokenizer

    from pipeline import audio, models

    model = WhisperModel(models.resolve("tiny.en").path, device="cpu", compute_type="int8",
                         cpu_threads=args.threads, num_workers=1)
    paths = sorted(CLIPS.iterdir())[: args.clips]
    features = []
    for path in paths:
        mel = model.feature_extractor(audio.decode(str(path)).samples)[:, :3000]
        features.append(np.pad(mel, ((0, 0), (0, 3000 - mel.shape[1]))).astype(np.float32))
    tokenizer = Tokenizer(model.hf_tokenizer, False, task="transcribe", language="en")
    # Prompts of one length, different words: what a batch of long files' windows would
    # carry (their previous text, cut to the same number of tokens).
    prompts = [[tokenizer.sot_prev] + tokenizer.encode(" word" * 3 if i % 2 else " thing" * 3)
               + list(tokenizer.sot_sequence) for i in range(len(paths))]

    def encode(rows: list[np.ndarray]) -> np.ndarray:
        return np.array(model.model.encode(ctranslate2.StorageView.from_array(np.stack(rows)), to_cpu=False))

    def generate(encoded: np.ndarray, rows: list[list[int]]) -> list[tuple]:
        results = model.model.generate(ctranslate2.StorageView.from_array(encoded), rows, beam_size=5,
                                       return_scores=True, return_no_speech_prob=True, max_length=448,
                                       suppress_blank=True, suppress_tokens=[-1])
        return [(r.sequences_ids[0], r.scores[0], r.no_speech_prob) for r in results]

    alone = [encode([f])[0] for f in features]
    together = encode(features)
    same_encoder = all(np.array_equal(a, b) for a, b in zip(alone, together))
    decoded_alone = [generate(alone[i][None], [prompts[i]])[0] for i in range(len(paths))]
    decoded_together = generate(np.stack(alone), prompts)
    same_decoder = decoded_alone == decoded_together
    print(f"{len(paths)} real clips, tiny.en int8, {args.threads} thread(s)")
    print(f"  encoder rows identical alone and batched: {same_encoder}")
    print(f"  beam-5 tokens, scores and no-speech probabilities identical alone and batched: {same_decoder}")
    try:
        generate(np.stack(alone[:2]), [prompts[0], prompts[1][1:]])
        print("  prompts of different lengths in one batch: accepted")
    except ValueError as exc:
        print(f"  prompts of different lengths in one batch: refused ({str(exc).split('.')[0]})")

    print("  seconds for all clips (best of rounds); ratio = one at a time / batched:")
    for batch in (2, 4, 8):
        one, many = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for i in range(len(paths)):
                generate(encode([features[i]]), [prompts[i]])
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for k in range(0, len(paths), batch):
                generate(encode(features[k:k + batch]), prompts[k:k + batch])
            many.append(time.perf_counter() - t0)
        print(f"    batch {batch}: one at a time {min(one):5.2f} s, batched {min(many):5.2f} s, "
              f"{min(one) / min(many):4.2f}x (same text: the rows are identical)")


if __name__ == "__main__":
    main()

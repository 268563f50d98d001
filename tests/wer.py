"""Word error rate with the English text normalizer of the Whisper paper.

Used by the tests and the benchmarks (`bench/` puts the repository on its path); needs
the `dev` extra (whisper-normalizer, jiwer).
"""

from __future__ import annotations

import re
from typing import Sequence


def normalizer():
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as exc:
        raise ImportError("WER needs whisper-normalizer: pip install 'bulkscribe[dev]'") from exc
    return EnglishTextNormalizer()


def simple_normalize(text: str) -> str:
    """Lower case, punctuation removed, apostrophes kept inside words."""
    text = re.sub(r"[^\w\s']|(?<!\w)'|'(?!\w)", " ", text.lower())
    return " ".join(text.split())


def wer(references: Sequence[str], hypotheses: Sequence[str], *, whisper_normalizer: bool = True) -> float:
    """Corpus WER: word errors over all pairs divided by all reference words."""
    import jiwer

    norm = normalizer() if whisper_normalizer else simple_normalize
    refs, hyps = [], []
    for ref, hyp in zip(references, hypotheses, strict=True):
        r = norm(ref)
        if r.strip():
            refs.append(r)
            hyps.append(norm(hyp) or "")
    if not refs:
        raise ValueError("no non-empty reference to score against")
    return float(jiwer.wer(refs, hyps))

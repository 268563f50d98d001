"""Find segments by words or phrases, case- and punctuation-insensitive, ranked.

A quoted phrase ("ask not") must appear as such; other words must all appear in the
segment, in any order. Ranking: an exact phrase of the whole query first, then more
occurrences, then the model's confidence (avg_logprob). Each hit comes with the
segments before and after it in the same file as context.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

# Lower case, and everything but letters, digits and apostrophes as a space: what
# "case- and punctuation-insensitive" means for both the text and the query.
_NORMALIZE_SQL = "trim(regexp_replace(lower({col}), '[^[:alnum:]'']+', ' ', 'g'))"


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w']+", " ", text.lower()).replace("_", " ").split())


@dataclass(frozen=True)
class Hit:
    uri: str
    start: float
    end: float
    text: str
    before: str | None
    after: str | None
    language: str | None
    avg_logprob: float


def terms(query: str) -> list[str]:
    """The query's phrases and words, normalized ("ask not" stays one phrase)."""
    try:
        parts = shlex.split(query)
    except ValueError:  # an unbalanced quote: take the words as they are
        parts = query.split()
    return [t for t in (normalize(p) for p in parts) if t]


def search(
    output,
    query: str,
    *,
    limit: int = 20,
    language: str | None = None,
    uri_like: str | None = None,
    min_logprob: float | None = None,
) -> list[Hit]:
    """Segments of `output` (an opened `pipeline.query.Output`) that match `query`.

    Args:
        uri_like: a SQL LIKE pattern on the uri, e.g. '%/2019/%'.
        min_logprob: keep segments whose avg_logprob is at least this (confidence).
    """
    wanted = terms(query)
    if not wanted:
        raise ValueError("search needs at least one word")
    norm = _NORMALIZE_SQL.format(col="text")
    padded = [f" {t} " for t in wanted]  # padding with spaces matches whole words only
    filters, filter_params = [], []
    for clause, value in (("language = ?", language), ("uri like ?", uri_like), ("avg_logprob >= ?", min_logprob)):
        if value is not None:
            filters.append(clause)
            filter_params.append(value)
    occurrences = " + ".join(
        f"(length(' ' || norm || ' ') - length(replace(' ' || norm || ' ', ?, ''))) / {len(p)}" for p in padded
    )
    sql = f"""
        with hits as (
            select unit_id, segment, uri, start, "end", text, language, avg_logprob, {norm} as norm
            from segments
            where {" and ".join(filters) or "true"}
        ),
        matched as (
            select *, contains(' ' || norm || ' ', ?) as exact, ({occurrences}) as n
            from hits where {" and ".join("contains(' ' || norm || ' ', ?)" for _ in padded)}
        )
        select m.uri, m.start, m."end", m.text, b.text as before, a.text as after, m.language, m.avg_logprob
        from matched m
        left join segments b on b.unit_id = m.unit_id and b.segment = m.segment - 1
        left join segments a on a.unit_id = m.unit_id and a.segment = m.segment + 1
        order by m.exact desc, m.n desc, m.avg_logprob desc, m.uri, m.start
        limit {int(limit)}
    """
    # Parameters in the order their ? stand in the SQL.
    ordered = [*filter_params, f" {' '.join(wanted)} ", *padded, *padded]
    rows = output.con.execute(sql, ordered).fetchall()
    return [Hit(*row) for row in rows]


def highlight(text: str, query: str, mark: tuple[str, str] = ("\033[1m", "\033[0m")) -> str:
    """`text` with every query word or phrase marked, whatever its case and punctuation."""
    for term in sorted(terms(query), key=len, reverse=True):
        words = [re.escape(w) for w in term.split()]
        pattern = r"(?<![\w'])" + r"[^\w']+".join(words) + r"(?![\w'])"
        text = re.sub(pattern, lambda m: f"{mark[0]}{m.group(0)}{mark[1]}", text, flags=re.IGNORECASE)
    return text

"""Write transcripts out as SRT, WebVTT, plain text, JSON or TSV: one file per unit.

The formats follow whisper's own writers (`whisper/utils.py`): SRT timestamps always
carry hours and a decimal comma, VTT ones carry hours only when needed and a decimal
point, TSV has integer milliseconds, and "-->" inside text becomes "->". Files are
named after their source, with the source's folder structure mirrored below the
target folder.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from typing import Any, Iterable

logger = logging.getLogger(__name__)

FORMATS = ("srt", "vtt", "txt", "json", "tsv")


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    milliseconds = round(seconds * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


def _cue_text(text: str) -> str:
    return text.strip().replace("-->", "->")


def channel_label(channel: int | None) -> str | None:
    """How a channel is named in subtitles and text: "channel 0", "channel 1", ...
    (the `channel` column's numbers); None for a mixdown."""
    return None if channel is None else f"channel {channel}"


def render(fmt: str, segments: list[dict[str, Any]], unit: dict[str, Any]) -> str:
    """The text of one unit's transcript in `fmt`; `segments` in order, `unit` its files row.
    Segments of a file transcribed channel by channel (`channel` not null) come in time
    order, each labelled with its channel: a conversation, speaker by speaker."""
    labels = [channel_label(s.get("channel")) for s in segments]
    if fmt == "srt":
        return "".join(
            f"{i}\n{format_timestamp(s['start'], True, ',')} --> {format_timestamp(s['end'], True, ',')}\n"
            f"{f'[{label}] ' if label else ''}{_cue_text(s['text'])}\n\n"
            for i, (s, label) in enumerate(zip(segments, labels), start=1)
        )
    if fmt == "vtt":
        # WebVTT's voice span names the speaker: players show it, and style it per voice.
        return "WEBVTT\n\n" + "".join(
            f"{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}\n"
            f"{f'<v {label}>' if label else ''}{_cue_text(s['text'])}\n\n"
            for s, label in zip(segments, labels)
        )
    if fmt == "txt":
        # A conversation reads in time order, each line with its time and channel.
        return "".join((f"[{format_timestamp(s['start'])}] {label}: " if label else "") + s["text"].strip() + "\n"
                       for s, label in zip(segments, labels))
    if fmt == "tsv":
        split = any(labels)

        def line(s: dict[str, Any]) -> str:
            cells = [str(round(1000 * s["start"])), str(round(1000 * s["end"]))]
            if split:
                cells.append("" if s.get("channel") is None else str(s["channel"]))
            return "\t".join([*cells, s["text"].strip().replace("\t", " ")]) + "\n"

        return ("start\tend\tchannel\ttext\n" if split else "start\tend\ttext\n") + "".join(map(line, segments))
    if fmt == "json":
        return json.dumps(
            {
                "uri": unit["uri"],
                "language": unit.get("language"),
                "duration_s": unit.get("duration_s"),
                "status": unit.get("status"),
                "text": " ".join(s["text"].strip() for s in segments),
                "segments": [
                    {k: s[k] for k in ("segment", "channel", "start", "end", "text", "avg_logprob", "no_speech_prob",
                                       "compression_ratio", "temperature", "words")
                     if k in s and (k != "channel" or s[k] is not None)}
                    for s in segments
                ],
            },
            ensure_ascii=False,
            indent=2,
            default=float,
        ) + "\n"
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _safe_path(path: str) -> str:
    """A URI's path as a relative path that stays below the export folder: empty and `.`
    components dropped, `..` made `_`, control characters (a newline) made `_`."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    clean = ("_" if p == ".." else "".join("_" if ord(c) < 32 or c == "\x7f" else c for c in p) for p in parts)
    return "/".join(clean) or "_"


def target_names(uris: Iterable[str], fmt: str) -> dict[str, str]:
    """A relative output path per URI: the source's path below the URIs' common folder,
    its extension replaced by `fmt` (kept, when two sources would share a name). No name
    leads outside the export folder, whatever the URIs hold (`..`, newlines)."""
    uris = list(uris)
    paths = {u: _safe_path(u.split("://", 1)[-1]) for u in uris}
    common = posixpath.commonpath([posixpath.dirname(p) for p in paths.values()]) if paths else ""
    rel = {u: posixpath.relpath(p, common) if common else p for u, p in paths.items()}
    stems = {u: posixpath.splitext(r)[0] for u, r in rel.items()}
    taken: dict[str, int] = {}
    for stem in stems.values():
        taken[stem] = taken.get(stem, 0) + 1
    return {u: (stems[u] if taken[stems[u]] == 1 else rel[u]) + f".{fmt}" for u in uris}


def export(output, fmt: str, to: str, where: str | None = None) -> list[str]:
    """Write one `fmt` file per source file of `output` (an opened `pipeline.query.Output`) below `to`.

    Args:
        where: a DuckDB condition on the `files` view, e.g. "language = 'en'".

    Returns:
        The paths written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    condition = f"where {where}" if where else ""
    units = output.sql(f"select * from files {condition} order by uri, start_s").to_arrow_table().to_pylist()
    segments: dict[str, list[dict[str, Any]]] = {u["uri"]: [] for u in units}
    if units:
        # A long file split into windows has a unit per window: its segments join up in time.
        # And a file transcribed channel by channel has a unit per channel: its segments
        # interleave in time, each labelled with its channel.
        rows = output.sql(
            "select * from segments where unit_id in (select unit_id from files "
            f"{condition}) order by uri, start, channel, segment"
        ).to_arrow_table().to_pylist()
        for row in rows:
            segments[row["uri"]].append(row)
    files = {}
    for unit in units:
        seen = files.get(unit["uri"])
        if seen is None:
            files[unit["uri"]] = dict(unit)
        else:
            if unit.get("channel") in (None, 0):  # the channels of one stretch last as long as each other
                seen["duration_s"] = (seen["duration_s"] or 0.0) + (unit["duration_s"] or 0.0)
            seen["language"] = seen["language"] or unit["language"]
            if seen["status"] != unit["status"]:
                seen["status"] = "failed" if "failed" in (seen["status"], unit["status"]) else "ok"
    if fmt != "json":
        # A file with nothing said (no_speech, failed) gets no empty subtitle file; its
        # JSON still records its status.
        empty = [uri for uri in files if not segments[uri]]
        if empty:
            logger.info("%d file(s) without segments (no_speech or failed) get no %s file", len(empty), fmt)
        files = {uri: unit for uri, unit in files.items() if segments[uri]}
    names = target_names(list(files), fmt)
    written = []
    for uri, unit in files.items():
        path = os.path.join(to, names[uri])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(fmt, segments[uri], unit))
        written.append(path)
    return written

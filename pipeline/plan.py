"""Group sorted units into numbered shards, the units of commit and of retry.

A shard aims at a given amount of audio, estimated from file sizes (decoding every file
to learn its length would cost as much as the job). The plan is saved once per output
folder; a rerun that finds new units appends shards after the last number and never
renumbers, so a committed shard always means the same units.
"""

from __future__ import annotations

from typing import Iterator

import numpy
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.inputs import estimate_audio_s

# Shard size, in seconds of audio: enough shards to keep every actor busy with about four
# shards each, but none so large that losing it costs much, nor so small that commits dominate.
MIN_SHARD_AUDIO_S = 60.0
MAX_SHARD_AUDIO_S = 3600.0
SHARDS_PER_ACTOR = 4


def choose_shard_audio_s(total_audio_s: float, actors: int, units: int = 0, batch_size: int = 1) -> float:
    """The audio per shard for a collection of `total_audio_s` in `units` units run by
    `actors` actors that each transcribe `batch_size` units of a shard at once.

    About SHARDS_PER_ACTOR shards an actor; but a shard of fewer units than `batch_size`
    leaves part of its actor's batch empty (a collection of long files would give a file a
    shard), so shards hold `batch_size` units of the mean length where there is audio
    enough for one such shard an actor.
    """
    actors = max(1, actors)
    target = total_audio_s / (actors * SHARDS_PER_ACTOR)
    if units and batch_size > 1:
        target = max(target, min(batch_size * total_audio_s / units, total_audio_s / actors))
    return min(MAX_SHARD_AUDIO_S, max(MIN_SHARD_AUDIO_S, target))


def estimates(units: pa.Table) -> list[float]:
    """Estimated audio seconds of each unit: a window's own length where it has an end,
    else what is left of the file's duration (given by a manifest, else guessed from its
    size)."""
    durations = (units.column("duration_s").to_pylist() if "duration_s" in units.column_names
                 else [None] * units.num_rows)
    found = []
    for uri, size, start, end, duration in zip(
        *(units.column(c).to_pylist() for c in ("uri", "size_bytes", "start_s", "end_s")), durations
    ):
        start = start or 0.0
        if end is not None:
            found.append(end - start)
        else:
            found.append(max(1.0, (duration if duration is not None else estimate_audio_s(uri, size)) - start))
    return found


def assign_shards(units: pa.Table, first_shard: int, shard_audio_s: float) -> pa.Table:
    """Number shards from `first_shard` over `units` in their (sorted) order.

    A shard closes before its estimated audio would pass its target, and a unit larger
    than that is a shard of its own. The target is `shard_audio_s`, except over the last
    1/`SHARDS_PER_ACTOR` of the audio, where it shrinks with the audio left (down to
    `MIN_SHARD_AUDIO_S`, or `shard_audio_s` if smaller): the pool runs the longest
    shards first, so its last shards are short, and no actor works long on a last shard
    while the others have nothing left (`tapered_target`).

    Windows of split files are units like any other: the windows of several files may
    share a shard (10^6 hour-long files in windows of 10 minutes would otherwise be
    6 x 10^6 shards), and a lost shard costs at most `shard_audio_s` of audio either way.

    Returns:
        `units` with `shard` (int32) and `est_audio_s` (float64) added first.
    """
    est = estimates(units)
    shards, shard, filled = [], first_shard, 0.0
    left = sum(est)
    taper_from = left / SHARDS_PER_ACTOR
    target = tapered_target(shard_audio_s, left, taper_from)
    for seconds in est:
        if filled > 0 and filled + seconds > target:
            shard, filled = shard + 1, 0.0
            target = tapered_target(shard_audio_s, left, taper_from)
        shards.append(shard)
        filled += seconds
        left -= seconds
    table = units.add_column(0, "shard", pa.array(shards, pa.int32()))
    return table.add_column(table.schema.get_field_index("size_bytes") + 1, "est_audio_s", pa.array(est, pa.float64()))


def tapered_target(shard_audio_s: float, left_s: float, taper_from_s: float) -> float:
    """The target of a shard that opens with `left_s` of audio left to plan: `shard_audio_s`
    until `taper_from_s` is left, then in proportion to what is left (the shards an actor
    takes once the others are running their last ones), never below the floor.

    With `shard_audio_s` = total / (actors x SHARDS_PER_ACTOR), the taper starts about
    when each actor has one shard left. 45 one-minute files on 2 actors (a target of 5.6
    minutes): shards of 5 files, then of 2, 1, 1 and 1; run longest first, the job ends
    23 minutes in, against 22.5 with no waiting (an untapered plan, nine shards of 5
    files: 25 minutes, one actor idle for the last 5).
    """
    floor = min(shard_audio_s, MIN_SHARD_AUDIO_S)
    if taper_from_s <= 0 or left_s >= taper_from_s:
        return shard_audio_s
    return max(floor, shard_audio_s * left_s / taper_from_s)


def new_units(units: pa.Table, planned: pa.Table | None, by_uri: bool = False) -> pa.Table:
    """The units not in the saved plan yet; with `by_uri`, whole files the plan holds as
    windows count as planned too."""
    if planned is None or planned.num_rows == 0:
        return units
    known = pc.is_in(units.column("unit_id"), value_set=planned.column("unit_id"))
    if by_uri and "split" in planned.column_names:
        windowed = planned.filter(pc.fill_null(planned.column("split"), False)).column("uri")
        known = pc.or_(known, pc.is_in(units.column("uri"), value_set=windowed))
    return units.filter(pc.invert(known))


def next_shard(planned: pa.Table | None) -> int:
    if planned is None or planned.num_rows == 0:
        return 0
    return int(pc.max(planned.column("shard")).as_py()) + 1


def group_by_shard(planned: pa.Table, shards: list[int]) -> Iterator[tuple[int, pa.Table]]:
    """(shard, its plan rows) for each of `shards`, in one pass over the plan: one sort,
    then zero-copy slices (a filter per shard cost units x shards: 315 s at 10^6 files)."""
    wanted = planned.filter(pc.is_in(planned.column("shard"), value_set=pa.array(shards, planned.schema.field("shard").type)))
    ordered = wanted.sort_by([("shard", "ascending")])  # stable: units keep their plan order
    numbers = ordered.column("shard").to_numpy()
    if len(numbers) == 0:
        return
    starts = [0, *(numpy.flatnonzero(numbers[1:] != numbers[:-1]) + 1), len(numbers)]
    for begin, end in zip(starts, starts[1:]):
        yield int(numbers[begin]), ordered.slice(begin, end - begin)

import collections
import heapq
import random

import pyarrow as pa

from pipeline import inputs, plan
from pipeline.schema import UNIT_SCHEMA


def _units(sizes, durations=None):
    uris = [f"/a/{i:03d}.mp3" for i in range(len(sizes))]
    return pa.table(
        {"unit_id": [inputs.unit_id(u) for u in uris], "uri": uris, "size_bytes": sizes,
         "start_s": [0.0] * len(uris), "end_s": [None] * len(uris), "duration_s": durations or [None] * len(uris)},
        schema=UNIT_SCHEMA,
    )


def test_shards_close_at_the_target_and_big_files_stand_alone():
    # 16 kB/s for mp3: 160 kB is 10 s of audio.
    units = _units([160_000] * 10 + [16_000_000] + [160_000] * 3)
    planned = plan.assign_shards(units, 0, shard_audio_s=30)
    shards = planned.column("shard").to_pylist()
    assert shards == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 5, 5, 5]
    assert planned.column("est_audio_s").to_pylist()[10] == 1000.0


def test_windows_of_several_files_share_shards():
    from pipeline import windows

    units = _units([24_000_000, 12_000_000], durations=[3000.0, 1500.0])  # as a manifest gives them
    split = windows.split_long(units, 600.0)  # 5 windows, then 3 (the last 300 s)
    planned = plan.assign_shards(split, 0, shard_audio_s=1800)
    assert planned.column("est_audio_s").to_pylist() == [600.0] * 5 + [600.0, 600.0, 300.0]
    # Three windows make a shard; the second file's first window joins the first file's last two.
    assert planned.column("shard").to_pylist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_planning_is_deterministic_and_appends_without_renumbering():
    units = _units([160_000] * 8)
    first = plan.assign_shards(units, 0, 20)
    assert first.equals(plan.assign_shards(units, 0, 20))
    more = _units([160_000] * 11)
    fresh = plan.new_units(more, first)
    assert len(fresh) == 3
    added = plan.assign_shards(fresh, plan.next_shard(first), 20)
    assert min(added.column("shard").to_pylist()) == max(first.column("shard").to_pylist()) + 1


def test_shard_size_scales_with_collection_and_actors():
    assert plan.choose_shard_audio_s(400, 2) == plan.MIN_SHARD_AUDIO_S
    assert plan.choose_shard_audio_s(36_000_000, 100) == plan.MAX_SHARD_AUDIO_S
    assert plan.choose_shard_audio_s(24_000, 2) == 3000
    # Long files: a shard holds a batch of them, while every actor still has a shard.
    assert plan.choose_shard_audio_s(3600, 2, units=8, batch_size=8) == 1800
    assert plan.choose_shard_audio_s(3600 * 4, 2, units=32, batch_size=8) == 3600
    # Short clips: shards hold many more than a batch anyway.
    assert plan.choose_shard_audio_s(1600, 2, units=200, batch_size=8) == 200


def _longest_first_makespan(shard_seconds, actors):
    """When the last actor finishes, shards handed out longest first to whichever is free."""
    free = [0.0] * actors
    for seconds in sorted(shard_seconds, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free)


def _shard_seconds(planned):
    totals = collections.defaultdict(float)
    for shard, seconds in zip(planned.column("shard").to_pylist(), planned.column("est_audio_s").to_pylist()):
        totals[shard] += seconds
    return list(totals.values())


def test_the_last_shards_are_short_so_no_actor_works_on_alone():
    # 45 one-minute files on 2 actors: shards of 5 files, then smaller ones at the end.
    units = _units([960_000] * 45)
    target = plan.choose_shard_audio_s(45 * 60.0, 2)
    planned = plan.assign_shards(units, 0, target)
    assert [n for _, n in sorted(collections.Counter(planned.column("shard").to_pylist()).items())] == \
        [5] * 8 + [2, 1, 1, 1]
    assert _longest_first_makespan(_shard_seconds(planned), 2) == 23 * 60
    # Over many collections and pool sizes, files equal or not (20 s to 2 minutes): the
    # job ends at most one file's length after a perfect share (untapered: up to 7).
    sizes = random.Random(7)
    for actors in (2, 3, 4, 8):
        for files in range(10, 200, 7):
            for seconds in ([60.0] * files, [sizes.randrange(320_000, 1_920_000) / 16_000 for _ in range(files)]):
                planned = plan.assign_shards(_units([int(s * 16_000) for s in seconds]), 0,
                                             plan.choose_shard_audio_s(sum(seconds), actors))
                assert planned.column("unit_id").to_pylist() == _units([0] * files).column("unit_id").to_pylist()
                shard_seconds = _shard_seconds(planned)
                assert min(shard_seconds) >= min(min(seconds), plan.MIN_SHARD_AUDIO_S) - 1e-9
                ideal = sum(seconds) / actors
                assert _longest_first_makespan(shard_seconds, actors) <= ideal + max(seconds) + 1e-6


def test_size_estimates_by_container():
    assert inputs.estimate_audio_s("/x.wav", 320_000) == 10
    assert inputs.estimate_audio_s("/x.MP3", 160_000) == 10
    assert inputs.estimate_audio_s("/x.mp3", None) == 60


def test_units_are_grouped_by_shard_in_one_pass_keeping_their_order():
    import pyarrow as pa

    from pipeline.plan import group_by_shard

    planned = pa.table({"shard": pa.array([0, 0, 1, 2, 2, 2, 1, 3], pa.int32()),
                        "unit_id": list("abcdefgh")})
    groups = {s: t.column("unit_id").to_pylist() for s, t in group_by_shard(planned, [3, 1, 2])}
    assert groups == {1: ["c", "g"], 2: ["d", "e", "f"], 3: ["h"]}
    assert list(group_by_shard(planned, [])) == []


def test_a_duration_the_manifest_gives_is_the_estimate():
    units = _units([160_000] * 3)
    given = units.set_column(units.schema.get_field_index("duration_s"), "duration_s",
                             pa.array([600.0, None, 0.2], pa.float64()))
    # 600 s as given (the size says 10 s); the size where none is given; at least 1 s.
    assert plan.estimates(given) == [600.0, 10.0, 1.0]

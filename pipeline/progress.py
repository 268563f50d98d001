"""The progress bar of a run: it moves by each finished shard's planned audio."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from pipeline.commit import ShardResult


class Progress:
    """The progress bar's figures. It moves by each finished shard's planned audio (file
    sizes estimate it before decoding), so its total never changes and the time left is
    the planned work left at the speed so far; the audio measured after decoding and the
    real-time factor are shown beside it. Rescaling the total by a few early shards made
    it swing (18 -> 36 -> 26 audio-min) and the ETA read 7:54 for a run that ended at 1:37.
    """

    def __init__(self, est_s: dict[int, float]):
        self.est_s = est_s
        self.total_min = round(sum(est_s.values()) / 60, 1)
        self.shards = self.failed = 0
        self.audio_s = 0.0
        self.started = time.monotonic()

    def add(self, result: ShardResult) -> float:
        """Count a finished shard; returns the bar's step, in planned audio-minutes."""
        self.shards += 1
        self.failed += result.failed
        self.audio_s += result.audio_s
        return self.est_s[result.shard] / 60

    def postfix(self) -> str:
        rate = self.audio_s / max(time.monotonic() - self.started, 1e-9)
        return (f"shards {self.shards}/{len(self.est_s)}, {self.audio_s / 60:.1f} audio-min measured, "
                f"{rate:.1f}x RT, failed {self.failed}")


@contextlib.contextmanager
def progress_bar(est_s: dict[int, float], show: bool | None) -> Iterator[Callable[[ShardResult], None]]:
    """A bar over the shards of `est_s` (planned audio seconds by shard); yields the
    function that counts a finished shard. `show`: None shows it on a terminal only."""
    from tqdm import tqdm

    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        # Inside a Ray job `tqdm` is not always the full package; there is no terminal
        # there anyway, so log lines and the (disabled) bar cannot fight.
        logging_redirect_tqdm = contextlib.nullcontext

    tally = Progress(est_s)
    with logging_redirect_tqdm(), tqdm(
        total=tally.total_min, unit="audio-min", disable=None if show is None else not show,
        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} planned audio-min [{elapsed}<{remaining}{postfix}]",
    ) as bar:
        def count(result: ShardResult) -> None:
            bar.update(tally.add(result))
            bar.set_postfix_str(tally.postfix(), refresh=True)

        yield count

"""Several streams transcribed at once on one model, sharing its decoder calls.

An actor holds one model and a shard of units. Each unit is a *stream* that keeps its own
sequential long-form loop (seek, previous-text prompt, timestamps, fallback), run in a
*slot* thread of its own. The only thing streams share is the model's decoder call: a
slot that needs one waits in `Lockstep` until every live slot waits too, and the calls
are then made together, several rows in one call (the caller's `run_round` decides how). So a round's
rows are the windows the live streams reached, which depends on the shard's content
only, never on timing: a slot that is slow (decoding its audio, splitting its segments)
holds the round up rather than letting it leave without it.

A stream whose first pass shows that a window needs Whisper's temperature fallback is
handed to one fallback thread, which decodes it again alone (see
`pipeline.transcriber.Transcriber.transcribe`); its slot takes the next unit at once.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

# Audio (seconds) that may wait for the fallback thread; a slot with more to hand over
# waits for room, which bounds an actor's memory on a shard of noise.
FALLBACK_AHEAD_S = 600.0


@dataclass
class Stream:
    """One unit to transcribe: `tag` is the caller's, `samples` 16 kHz mono float32.

    `started` and `ended` (time.monotonic) are set here: the unit's wall time, shared
    with the streams beside it.
    """

    tag: Any
    samples: Any
    budget_s: float
    started: float = 0.0
    ended: float = 0.0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / 16_000


@dataclass
class Call:
    """One stream's decoder call, waiting for its round. `order` is the stream's place in
    the shard (the row order of a batched call); `key` groups the calls that can share one."""

    order: int
    key: Any
    args: Any
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class NeedsFallback(Exception):
    """The first pass of a stream found a window Whisper would decode again at a higher
    temperature: the stream is decoded again alone."""


class Lockstep:
    """Gathers the decoder calls of `slots` threads and makes them together.

    Args:
        run: makes a round's calls (a list, in stream order), setting each one's
            `result` or `error`.
        slots: the threads that will call `call`, each until it calls `leave`.
    """

    def __init__(self, run: Callable[[list[Call]], None], slots: int):
        self._run = run
        self._cond = threading.Condition()
        self._live = slots
        self._waiting: list[Call] = []

    def call(self, call: Call) -> Any:
        """`call`'s result, once every live slot has a call waiting and the round is made."""
        with self._cond:
            self._waiting.append(call)
            self._make_round()
            while not call.done:
                self._cond.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def leave(self) -> None:
        """This slot has no more calls to make."""
        with self._cond:
            self._live -= 1
            self._make_round()

    def _make_round(self) -> None:
        if not self._waiting or len(self._waiting) < self._live:
            return
        calls, self._waiting = sorted(self._waiting, key=lambda c: c.order), []
        # Under the lock: every live slot is waiting for this round anyway.
        try:
            self._run(calls)
        except BaseException as exc:  # a bug in `run`: every caller sees it
            for c in calls:
                if c.result is None and c.error is None:
                    c.error = exc
        for c in calls:
            c.done = True
        self._cond.notify_all()


@dataclass
class _Fallbacks:
    """The streams waiting for the fallback thread, at most `FALLBACK_AHEAD_S` of audio
    (or one stream of any length)."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    items: list = field(default_factory=list)
    queued_s: float = 0.0
    closed: bool = False

    def put(self, item: tuple[Stream, float]) -> None:
        with self.cond:
            while self.items and self.queued_s + item[0].duration_s > FALLBACK_AHEAD_S:
                self.cond.wait()
            self.items.append(item)
            self.queued_s += item[0].duration_s
            self.cond.notify_all()

    def get(self) -> tuple[Stream, float] | None:
        with self.cond:
            while not self.items and not self.closed:
                self.cond.wait()
            if not self.items:
                return None
            item = self.items.pop(0)
            self.queued_s -= item[0].duration_s
            self.cond.notify_all()
            return item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _Crash:
    def __init__(self, exc: BaseException):
        self.exc = exc


_SLOT_DONE = object()
_FALLBACK_DONE = object()


def run_streams(
    streams: Iterable[Stream],
    width: int,
    *,
    first_pass: Callable[[Stream, float, Lockstep, int], Any],
    alone: Callable[[Stream, float], Any],
    run_round: Callable[[list[Call]], None],
) -> Iterator[tuple[Stream, Any]]:
    """Transcribe `streams`, at most `width` at once; yields (stream, outcome) as each ends.

    Args:
        first_pass: (stream, deadline, lockstep, order) -> outcome; makes its decoder calls
            through the lockstep; raises NeedsFallback to hand the stream to `alone`.
        alone: (stream, deadline) -> outcome: the stream decoded again on its own.
        run_round: makes one round of calls (see `Lockstep`).

    An outcome is what `first_pass` or `alone` returned, or the `Exception` it raised
    (UnitTimeout, a decoding error): it belongs to its stream only. An exception raised
    while taking the next stream from `streams` is a bug: it is raised here.
    """
    width = max(1, width)
    source = iter(streams)
    source_lock = threading.Lock()
    order = itertools.count()
    stop = threading.Event()
    results: queue.SimpleQueue = queue.SimpleQueue()
    lockstep = Lockstep(run_round, width)
    fallbacks = _Fallbacks()

    def next_stream() -> tuple[Stream, int] | None:
        with source_lock:
            if stop.is_set():
                return None
            stream = next(source, None)
            return None if stream is None else (stream, next(order))

    def finish(stream: Stream, work: Callable[[], Any]) -> None:
        """`work()`'s outcome (or the exception it raised) as `stream`'s result."""
        try:
            outcome = work()
        except NeedsFallback:
            raise
        except Exception as exc:
            outcome = exc
        stream.ended = time.monotonic()
        results.put((stream, outcome))

    def guarded(body: Callable[[], None], done: object, last: Callable[[], None] = lambda: None):
        """A thread's target: `body`, whose unexpected exception stops the run; then
        `last` and the `done` message, whatever happened."""
        def target() -> None:
            try:
                body()
            except BaseException as exc:
                stop.set()
                results.put(_Crash(exc))
            finally:
                last()
                results.put(done)
        return target

    def slot() -> None:
        while (taken := next_stream()) is not None:
            stream, place = taken
            stream.started = time.monotonic()
            try:
                finish(stream, lambda: first_pass(stream, stream.started + stream.budget_s, lockstep, place))
            except NeedsFallback:
                fallbacks.put((stream, time.monotonic() - stream.started))

    def fallback() -> None:
        while (item := fallbacks.get()) is not None:
            stream, spent_s = item
            finish(stream, lambda: alone(stream, time.monotonic() + stream.budget_s - spent_s))

    threads = [threading.Thread(target=guarded(slot, _SLOT_DONE, lockstep.leave), name=f"bulkscribe-stream-{i}",
                                daemon=True) for i in range(width)]
    threads.append(threading.Thread(target=guarded(fallback, _FALLBACK_DONE), name="bulkscribe-fallback", daemon=True))
    for t in threads:
        t.start()
    slots_left, fallback_left = width, True
    try:
        while slots_left or fallback_left:
            message = results.get()
            if message is _SLOT_DONE:
                slots_left -= 1
                if not slots_left:
                    fallbacks.close()
            elif message is _FALLBACK_DONE:
                fallback_left = False
            elif isinstance(message, _Crash):
                raise message.exc
            else:
                yield message
    finally:
        # Raised, or the caller stopped early: the slots finish the streams they hold
        # and take no more.
        stop.set()
        fallbacks.close()

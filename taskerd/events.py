"""Fan-out of task events to watchers (StreamResults and Run).

Publishing costs one dict look-up when nobody watches. Each watcher has a bounded queue; a watcher
that falls too far behind is dropped (its stream ends with an error) rather than growing memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection

from tasker.v1 import tasker_pb2 as pb

WATCHER_QUEUE = 10_000


class WatcherTooSlow(Exception):
    """The watcher did not keep up and missed events."""


class Watcher:
    """One subscription: events for some task ids (or all), with or without output."""

    __slots__ = (
        "_closed", "_hub", "_queue", "finished_only", "ids", "output", "overflowed", "remaining",
    )  # fmt: skip

    def __init__(
        self, hub: EventHub, ids: Collection[int] | None, output: bool, finished_only: bool
    ) -> None:
        self._hub = hub
        self.ids = frozenset(ids) if ids is not None else None
        self.remaining = set(ids) if ids is not None else None
        self.output = output
        self.finished_only = finished_only
        self.overflowed = False
        self._closed = False
        self._queue: asyncio.Queue[pb.TaskEvent | None] = asyncio.Queue(WATCHER_QUEUE)

    def push(self, event: pb.TaskEvent | None) -> None:
        """Queue an event; ``None`` ends the stream."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._closed = True
            self._queue.get_nowait()  # make room for the end marker
            self._queue.put_nowait(None)
        else:
            if event is None:
                self._closed = True

    async def events(self) -> AsyncIterator[pb.TaskEvent]:
        """Yield events until every watched task has finished (or the hub closes)."""
        try:
            while True:
                event = await self._queue.get()
                if event is None:
                    if self.overflowed:
                        raise WatcherTooSlow(f"watcher fell {WATCHER_QUEUE} events behind")
                    return
                yield event
                if self.remaining is not None and event.WhichOneof("kind") == "finished":
                    self.remaining.discard(event.task_id)
                    if not self.remaining:
                        return
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._hub.unsubscribe(self)


class EventHub:
    """Routes each task's events to the watchers of that task and to the firehose."""

    def __init__(self) -> None:
        self._by_id: dict[int, set[Watcher]] = {}
        self._all: set[Watcher] = set()
        self._closed = False

    def subscribe(
        self, ids: Collection[int] | None, *, output: bool, finished_only: bool = False
    ) -> Watcher:
        """Watch ``ids`` (None: every task). Subscribe before reading any past state."""
        watcher = Watcher(self, ids, output, finished_only)
        if self._closed:
            watcher.push(None)
        elif ids is None:
            self._all.add(watcher)
        else:
            for i in ids:
                self._by_id.setdefault(i, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        if watcher.ids is None:
            self._all.discard(watcher)
            return
        for i in watcher.ids:
            subs = self._by_id.get(i)
            if subs is not None:
                subs.discard(watcher)
                if not subs:
                    del self._by_id[i]

    def watched(self, task_id: int, *, output: bool = False) -> bool:
        """Whether anyone wants this task's events (of output, when ``output``)."""
        subs = self._by_id.get(task_id)
        if output:
            return any(w.output for w in self._all) or any(w.output for w in subs or ())
        return bool(subs) or bool(self._all)

    def publish(
        self,
        task_id: int,
        make: Callable[[bool], pb.TaskEvent],
        *,
        is_output: bool = False,
        is_final: bool = False,
    ) -> None:
        """Deliver an event built by ``make(with_output)`` to each interested watcher.

        ``make`` is called at most twice (with and without output), and only if someone watches.
        """
        subs = self._by_id.get(task_id)
        if not subs and not self._all:
            return
        cache: dict[bool, pb.TaskEvent] = {}
        for watcher in (*(subs or ()), *self._all):
            if (is_output and not watcher.output) or (watcher.finished_only and not is_final):
                continue
            event = cache.get(watcher.output)
            if event is None:
                event = cache[watcher.output] = make(watcher.output)
            watcher.push(event)

    def close(self) -> None:
        """End every stream (the daemon is stopping)."""
        self._closed = True
        for watcher in {*self._all, *(w for subs in self._by_id.values() for w in subs)}:
            watcher.push(None)

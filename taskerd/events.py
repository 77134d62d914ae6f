"""Fan-out of task events to watchers (StreamResults and Run).

Publishing costs one dict look-up when nobody watches. Each watcher's backlog is bounded both in
events (``WATCHER_QUEUE``) and in bytes of payload (``WATCHER_BYTES``). A watcher that falls
further behind is dropped: its backlog is freed at once and its stream ends with
:class:`WatcherTooSlow` (ABORTED), so an unread stream cannot pin memory. A watcher that is behind
but still reading gets a task's consecutive output chunks of one stream merged into one event (at
most ``MERGE_MAX`` bytes), so it sends fewer, larger messages and can catch up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection

import grpc

from tasker.events import ended_ids
from tasker.v1 import tasker_pb2 as pb
from taskerd.errors import RequestError

log = logging.getLogger("taskerd")

WATCHER_QUEUE = 10_000
"""Most events a watcher may have unread."""
WATCHER_BYTES = 4 << 20
"""Most payload bytes (see :func:`event_size`) a watcher may have unread."""
EVENT_OVERHEAD = 64
"""What an event costs beside its output bytes (ids, seq, time, framing), roughly."""
MERGE_MAX = 1 << 20
"""Largest merged output chunk; gRPC clients take messages up to 4 MiB by default."""
MANY_MAX = 1000
"""Most tasks in one ``finished_many`` event."""
_MERGE_SCAN = 64  # backlog entries looked at for chunks to merge


class WatcherTooSlow(RequestError):
    """The watcher did not keep up; its stream ends ABORTED ("stream fell behind: ...")."""

    code = grpc.StatusCode.ABORTED


def event_size(event: pb.TaskEvent) -> int:
    """What ``event`` costs in a backlog: its output bytes plus :data:`EVENT_OVERHEAD`.

    Cheap (no serialization): only output is counted, which is what can be large.
    """
    kind = event.WhichOneof("kind")
    if kind == "output":
        return EVENT_OVERHEAD + len(event.output.data)
    if kind == "finished":
        task = event.finished.task
        return EVENT_OVERHEAD + len(task.stdout) + len(task.stderr)
    return EVENT_OVERHEAD


class Watcher:
    """One subscription: events for some task ids (or all), with or without output."""

    __slots__ = (
        "_backlog", "_byte_cap", "_bytes", "_ended", "_hub", "_ready", "batch", "finished_only",
        "ids", "output", "overflowed", "remaining",
    )  # fmt: skip

    def __init__(
        self,
        hub: EventHub,
        ids: Collection[int] | None,
        output: bool,
        finished_only: bool,
        batch: bool = False,
    ) -> None:
        self._hub = hub
        #: Finished events that wait together leave as one ``finished_many`` (light records).
        self.batch = batch and finished_only and not output
        self.ids = frozenset(ids) if ids is not None else None
        self.remaining = set(ids) if ids is not None else None
        self.output = output
        self.finished_only = finished_only
        #: Why the watcher was dropped ("more than 4 MiB unread"), or "" while it keeps up.
        self.overflowed = ""
        self._ended = False
        self._backlog: deque[tuple[pb.TaskEvent, int]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._byte_cap = WATCHER_BYTES
        if finished_only and ids is not None:
            self._byte_cap = max(WATCHER_BYTES, len(self.ids or ()) * EVENT_OVERHEAD * 2)

    def push(self, event: pb.TaskEvent | None, size: int | None = None) -> None:
        """Queue an event (``size``: its :func:`event_size`, if known); ``None`` ends the stream.

        Past ``WATCHER_QUEUE`` events or ``WATCHER_BYTES`` unread, the watcher is dropped.
        """
        if self._ended:
            return
        if event is None:
            self._ended = True
        else:
            if size is None:
                size = event_size(event)
            backlog = self._backlog
            # A finished-only watcher of given tasks gets one event per task at most: its
            # backlog is bounded by what it watches (``wait`` on many ids, ``all_live``).
            bounded = self.finished_only and self.ids is not None
            if backlog and len(backlog) >= WATCHER_QUEUE and not bounded:
                self._drop(f"more than {WATCHER_QUEUE:,} events unread")
                return
            if backlog and self._bytes + size > self._byte_cap:
                self._drop(f"more than {self._byte_cap >> 20} MiB unread")
                return
            backlog.append((event, size))
            self._bytes += size
        self._ready.set()

    def _drop(self, reason: str) -> None:
        watched = "every task" if self.ids is None else f"tasks {sorted(self.ids)[:5]}"
        log.info("dropped a watcher of %s: %s", watched, reason)
        self.overflowed = reason
        self._ended = True
        self._backlog.clear()
        self._bytes = 0
        self._hub.unsubscribe(self)
        self._ready.set()

    def _next(self) -> pb.TaskEvent:
        """Take the oldest event; an output chunk comes merged with the chunks of the same task
        and stream that follow it with no other event of that task between them."""
        backlog = self._backlog
        event, size = backlog.popleft()
        self._bytes -= size
        if not backlog or event.WhichOneof("kind") != "output":
            return event
        task_id, stream = event.task_id, event.output.stream
        chunks = [event.output.data]
        total = len(chunks[0])
        taken: list[int] = []
        last = event
        for i in range(min(len(backlog), _MERGE_SCAN)):
            other = backlog[i][0]
            if other.task_id != task_id:
                continue  # another task's event: order across tasks is free
            data = other.output.data if other.WhichOneof("kind") == "output" else None
            if data is None or other.output.stream != stream or total + len(data) > MERGE_MAX:
                break
            chunks.append(data)
            total += len(data)
            taken.append(i)
            last = other
        if not taken:
            return event
        for i in reversed(taken):
            self._bytes -= backlog[i][1]
            del backlog[i]
        merged = pb.TaskEvent(task_id=task_id, seq=last.seq)
        merged.time.CopyFrom(event.time)
        merged.output.stream = stream
        merged.output.data = b"".join(chunks)
        return merged

    def _many(self, first: pb.TaskEvent) -> pb.TaskEvent:
        """``first`` and the finished events right behind it, as one ``finished_many`` of light
        records (the spec without env and stdin), up to :data:`MANY_MAX` tasks."""
        backlog = self._backlog
        tasks = [first.finished.task]
        while backlog and len(tasks) < MANY_MAX and backlog[0][0].WhichOneof("kind") == "finished":
            event, size = backlog.popleft()
            self._bytes -= size
            tasks.append(event.finished.task)
        if len(tasks) == 1:
            return first
        many = pb.TaskEvent(
            task_id=first.task_id, finished_many=pb.TaskEvent.FinishedMany(tasks=tasks)
        )
        many.time.CopyFrom(first.time)
        for task in many.finished_many.tasks:
            if task.spec.env or task.spec.stdin:
                task.spec.ClearField("env")
                task.spec.ClearField("stdin")
        return many

    async def events(self) -> AsyncIterator[pb.TaskEvent]:
        """Yield events until every watched task has finished (or the hub closes).

        Raises :class:`WatcherTooSlow` once the watcher was dropped for falling behind.
        """
        try:
            while True:
                while not self._backlog:
                    if self._ended:
                        if self.overflowed:
                            raise WatcherTooSlow(f"stream fell behind: {self.overflowed}")
                        return
                    self._ready.clear()
                    await self._ready.wait()
                event = self._next()
                if self.batch and self._backlog and event.WhichOneof("kind") == "finished":
                    event = self._many(event)
                yield event
                if self.remaining is not None and (done := ended_ids(event)):
                    self.remaining.difference_update(done)
                    if not self.remaining:
                        return
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching; what is still queued is dropped."""
        self._ended = True
        self._backlog.clear()
        self._bytes = 0
        self._hub.unsubscribe(self)


class EventHub:
    """Routes each task's events to the watchers of that task and to the firehose."""

    def __init__(self) -> None:
        self._by_id: dict[int, set[Watcher]] = {}
        self._all: set[Watcher] = set()
        self._closed = False

    def subscribe(
        self,
        ids: Collection[int] | None,
        *,
        output: bool,
        finished_only: bool = False,
        batch: bool = False,
    ) -> Watcher:
        """Watch ``ids`` (None: every task). Subscribe before reading any past state."""
        watcher = Watcher(self, ids, output, finished_only, batch)
        if self._closed:
            watcher.push(None)
        elif ids is None:
            self._all.add(watcher)
        else:
            for i in ids:
                self._by_id.setdefault(i, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        """Stop routing events to ``watcher`` (idempotent)."""
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
        cache: dict[bool, tuple[pb.TaskEvent, int]] = {}
        for watcher in (*(subs or ()), *self._all):
            if (is_output and not watcher.output) or (watcher.finished_only and not is_final):
                continue
            built = cache.get(watcher.output)
            if built is None:
                event = make(watcher.output)
                built = cache[watcher.output] = (event, event_size(event))
            watcher.push(*built)

    def close(self) -> None:
        """End every stream (the daemon is stopping)."""
        self._closed = True
        for watcher in {*self._all, *(w for subs in self._by_id.values() for w in subs)}:
            watcher.push(None)

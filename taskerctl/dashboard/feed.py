"""The dashboard's one view of taskerd, shared by every browser: it coalesces.

However fast tasks end, the dashboard's cost stays bounded:

* one firehose (``StreamResults`` of every task, ``finished_only`` and ``batch``: when the
  dashboard lags, a thousand ended tasks come in one message) feeds the wait and run times of
  the chart and marks the data changed;
* ``Stats`` four times a second marks it changed too (a task queued, started, paused...), and
  once a second ``Metrics`` and the counters make a sample of the chart, kept in a bounded ring;
* each distinct table view (filters and page) is one refresher shared by the browsers showing
  it: it lists its page again when the data changed, at most every :data:`MIN_REFRESH` seconds
  and never more often than :data:`COST_FACTOR` times what its last refresh took;
* each browser gets the latest state at most :data:`PUSH_RATE` times a second (app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from taskerctl._async import AsyncClient
from taskerctl._submit import record
from taskerctl.errors import TaskerError
from taskerctl.models import TaskResult, parse_state

log = logging.getLogger("taskerctl.dashboard")

#: Seconds between two samples of the chart, and how many are kept (10 minutes).
SAMPLE_EVERY = 1.0
HISTORY = 600
#: Seconds between two looks at Stats, to see that something changed.
STATS_EVERY = 0.25
#: A view lists its page again at most this often, and at most every COST_FACTOR times what its
#: last refresh took (a text search over 20,000 tasks waits longer than a first page).
MIN_REFRESH = 0.25
COST_FACTOR = 5.0
#: A view is listed again this long after its last refresh even when nothing seemed to change.
SAFETY_REFRESH = 5.0
#: Pushes per second to one browser, at most.
PUSH_RATE = 4.0
#: Rows of a page of the table, and tasks a text search looks at before it stops.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
TEXT_SCAN_LIMIT = 20_000
#: Wait and run times kept per sample for its percentiles.
_TIMES_PER_SAMPLE = 20_000


class Changes:
    """A version number and a way to wait for it to move."""

    def __init__(self) -> None:
        self.version = 0
        self._moved = asyncio.Event()

    def bump(self) -> None:
        """Something changed: wake every waiter."""
        self.version += 1
        self._moved.set()
        self._moved = asyncio.Event()

    async def wait_past(self, version: int, timeout: float | None = None) -> None:
        """Return once :attr:`version` is not ``version`` (or after ``timeout`` seconds)."""
        if self.version != version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), timeout)


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """A view of the table: filters (states, labels, group, text) and a page."""

    states: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    group: str = ""
    text: str = ""
    page_token: str = ""
    page_size: int = PAGE_SIZE

    @classmethod
    def parse(
        cls, get: Callable[[str], str | None], get_all: Callable[[str], Sequence[str]]
    ) -> Query:
        """From query parameters: ``state`` (repeatable, or comma-separated), ``label`` (K=V,
        repeatable), ``group``, ``q`` (text), ``page`` (a page token), ``size``. ValueError
        for a bad one."""
        states = tuple(
            parse_state(s).name.lower() for v in get_all("state") for s in v.split(",") if s
        )
        labels: list[tuple[str, str]] = []
        for item in get_all("label"):
            for pair in item.split(","):
                if not pair.strip():
                    continue
                key, eq, value = pair.strip().partition("=")
                if not eq or not key:
                    raise ValueError(f"label: {pair!r} is not K=V")
                labels.append((key, value))
        page = get("page") or ""
        if page and not page.isdigit():
            raise ValueError("page: not a page token")
        size = int(get("size") or PAGE_SIZE)
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError(f"size: from 1 to {MAX_PAGE_SIZE}")
        return cls(
            states=tuple(dict.fromkeys(states)),
            labels=tuple(sorted(dict(labels).items())),
            group=(get("group") or "").strip(),
            text=(get("q") or "").strip(),
            page_token=page,
            page_size=size,
        )

    async def page(
        self, client: AsyncClient, page_token: str, page_size: int
    ) -> tuple[list[TaskResult], str]:
        """A page of this view by the daemon's filters (the text is not one of them)."""
        return await client.list_page(
            self.states, dict(self.labels), group=self.group or None, page_size=page_size,
            page_token=page_token,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """A page of the table: rows (task records), the next page's token ("" on the last), and
    for a text search how many tasks it looked at and whether it stopped at its bound."""

    rows: tuple[dict[str, Any], ...]
    next_token: str
    scanned: int = 0
    bounded: bool = False
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "rows": list(self.rows),
            "next": self.next_token,
            "scanned": self.scanned,
            "bounded": self.bounded,
            "error": self.error,
            "scan_limit": TEXT_SCAN_LIMIT,
        }


def row(t: TaskResult) -> dict[str, Any]:
    """A task's row: its JSON record (as ``show --json``) and its command line."""
    d = record(t)
    d["command"] = t.command
    return d


def matches(task: TaskResult, text: str) -> bool:
    """Whether ``text`` (lower case) is in the task's id, command, labels, group or error."""
    hay = " ".join(
        (
            str(task.id),
            *task.argv,
            *(f"{k}={v}" for k, v in task.labels.items()),
            task.group,
            task.error,
        )
    )
    return text in hay.lower()


async def fetch_page(client: AsyncClient, query: Query) -> Page:
    """The page ``query`` names. Without text, one List. With text, List pages of 1,000 until
    a page of matches is found or :data:`TEXT_SCAN_LIMIT` tasks were looked at (the daemon has
    no text filter; all tasks are never loaded)."""
    if not query.text:
        tasks, next_token = await query.page(client, query.page_token, query.page_size)
        return Page(tuple(row(t) for t in tasks), next_token)
    text = query.text.lower()
    found: list[TaskResult] = []
    scanned = 0
    token = query.page_token
    while True:
        tasks, next_token = await query.page(client, token, 1000)
        for task in tasks:
            scanned += 1
            if matches(task, text):
                found.append(task)
                if len(found) == query.page_size:
                    break
            if scanned >= TEXT_SCAN_LIMIT:
                break
        rows = tuple(row(t) for t in found)
        last = tasks[-1].id if tasks else 0
        if len(found) == query.page_size:  # a full page: the next one starts after its last
            more = bool(next_token) or found[-1].id != last
            return Page(rows, str(found[-1].id) if more else "", scanned)
        if not next_token:
            return Page(rows, "", scanned)
        if scanned >= TEXT_SCAN_LIMIT:  # stopped at the bound: the user may search on
            stop = str(task.id) if tasks else next_token
            return Page(rows, stop, scanned, bounded=True)
        token = next_token


def _seconds(d: Any) -> float:
    return float(d.seconds + d.nanos / 1e9)


def _p50_p95(values: list[float]) -> tuple[float | None, float | None]:
    """The median and the 95th percentile of ``values`` (None, None for none)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (None, None)
    twentieths = statistics.quantiles(values, n=20, method="inclusive")
    return twentieths[9], twentieths[18]


class View:
    """One table view, shared by the browsers showing it: its latest page, refreshed when the
    daemon's data changed, at a bounded rate."""

    def __init__(self, hub: Hub, query: Query) -> None:
        self.hub = hub
        self.query = query
        self.page: Page | None = None
        self.version = 0
        self.users = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Refresh until cancelled."""
        hub = self.hub
        seen = -1
        last = 0.0
        while True:
            if hub.data.version != seen or time.monotonic() - last >= SAFETY_REFRESH:
                seen = hub.data.version
                start = time.monotonic()
                try:
                    page = await fetch_page(hub.client, self.query)
                except TaskerError as err:
                    page = Page((), "", error=err.message)
                last = time.monotonic()
                if page != self.page:
                    self.page = page
                    self.version += 1
                    hub.pushed.bump()
                await asyncio.sleep(max(MIN_REFRESH, COST_FACTOR * (last - start)))
            await hub.data.wait_past(seen, SAFETY_REFRESH)


class Hub:
    """What the dashboard knows of taskerd: the header, the chart's samples, the table views.

    ``data`` moves when the daemon's tasks changed; ``pushed`` when there is something new to
    push to browsers (a sample, a header, a view's page).
    """

    def __init__(self, client: AsyncClient, *, sample_every: float = SAMPLE_EVERY) -> None:
        self.client = client
        self.sample_every = sample_every
        self.data = Changes()
        self.pushed = Changes()
        self.samples: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.sample_seq = 0
        self.header: dict[str, Any] = {"connected": False, "error": "connecting to taskerd"}
        self.header_version = 0
        self.views: dict[Query, View] = {}
        #: Ended tasks the firehose brought (in all), and their wait and run times since the
        #: last sample.
        self.ended_seen = 0
        self._waits: list[float] = []
        self._runs: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._schedules: list[dict[str, Any]] = []  # read with each sample

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching the daemon (call from the running loop)."""
        self._tasks = [
            asyncio.ensure_future(self._watch_stats()),
            asyncio.ensure_future(self._firehose()),
        ]

    async def stop(self) -> None:
        """Stop every loop and close the client."""
        tasks = [*self._tasks, *(v.task for v in self.views.values() if v.task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    # -- views -----------------------------------------------------------------------------------

    def open_view(self, query: Query) -> View:
        """The view of ``query``, started if no browser showed it yet."""
        view = self.views.get(query)
        if view is None:
            view = self.views[query] = View(self, query)
            view.task = asyncio.ensure_future(view.run())
        view.users += 1
        return view

    def close_view(self, view: View) -> None:
        """A browser left ``view``: stop it when it was the last."""
        view.users -= 1
        if view.users <= 0 and self.views.get(view.query) is view:
            del self.views[view.query]
            if view.task is not None:
                view.task.cancel()

    def changed(self) -> None:
        """An action changed the daemon's tasks: refresh the views now."""
        self.data.bump()

    # -- watching the daemon ---------------------------------------------------------------------

    async def _firehose(self) -> None:
        """Every ended task, few messages when behind: times for the chart, and a change."""
        while True:
            try:
                async for ended in self.client.ends():
                    self._ended(ended)
            except TaskerError as err:
                log.info("dashboard: firehose ended: %s", err.message)
            self.data.bump()  # events may have been missed: the views look again
            await asyncio.sleep(1.0)

    def _ended(self, tasks: Sequence[TaskResult]) -> None:
        self.ended_seen += len(tasks)
        if len(self._waits) < _TIMES_PER_SAMPLE:
            for t in tasks:
                if t.run is not None and t.wait is not None:  # it ran (not a cancelled queued one)
                    self._waits.append(t.wait)
                    self._runs.append(t.run)
        self.data.bump()

    async def _watch_stats(self) -> None:
        """Stats four times a second (a change moves ``data``), and a sample every second."""
        client = self.client
        fingerprint: tuple[Any, ...] = ()
        last_sample = 0.0
        last_ended: int | None = None
        while True:
            try:
                stats = await client.stats()
                now = time.monotonic()
                print_ = (
                    stats.queued, stats.running, stats.paused, stats.stashed, stats.waiting,
                    stats.scheduled, stats.queued_low, stats.queued_normal, stats.queued_high,
                    stats.queued_critical, stats.succeeded, stats.failed, stats.timed_out,
                    stats.cancelled, stats.lost,
                    tuple((g.name, g.paused, g.queued, g.running) for g in stats.groups),
                )  # fmt: skip
                if print_ != fingerprint:
                    fingerprint = print_
                    self.data.bump()
                if now - last_sample >= self.sample_every:
                    metrics = await client.metrics()
                    self._schedules = [
                        {**x.to_json(), "command": x.command, "when": x.when}
                        for x in await client.schedules()
                    ]
                    ended = stats.succeeded + stats.failed + stats.timed_out + stats.cancelled
                    ended += stats.lost
                    dt = now - last_sample
                    rate = (ended - last_ended) / dt if last_ended is not None else None
                    last_ended, last_sample = ended, now
                    self._sample(stats, metrics, rate)
            except TaskerError as err:
                if self.header.get("connected", True) or self.header.get("error") != err.message:
                    self.header = {"connected": False, "error": err.message}
                    self.header_version += 1
                    self.pushed.bump()
                last_ended = None
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(STATS_EVERY)

    def _sample(self, stats: Any, metrics: Any, rate: float | None) -> None:
        waits, runs = self._waits, self._runs
        self._waits, self._runs = [], []
        self.sample_seq += 1
        (wait_p50, wait_p95), (run_p50, run_p95) = _p50_p95(waits), _p50_p95(runs)
        sample = {
            "seq": self.sample_seq,
            "t": time.time(),
            "done": rate,
            "arrivals": metrics.arrival_rate,
            "wait_p50": wait_p50,
            "wait_p95": wait_p95,
            "run_p50": run_p50,
            "run_p95": run_p95,
        }
        self.samples.append(sample)
        idle = max(0, stats.active_workers - stats.running)
        self.header = {
            "connected": True,
            "error": "",
            "version": stats.version,
            "uptime": stats.uptime,
            "shutting_down": stats.shutting_down,
            "workers": {
                "busy": stats.running,
                "idle": idle,
                "burst": stats.burst_workers,
                "active": stats.active_workers,
                "base": stats.base_workers,
                "max": stats.max_workers,
            },
            "queued": {
                "critical": stats.queued_critical,
                "high": stats.queued_high,
                "normal": stats.queued_normal,
                "low": stats.queued_low,
                "all": stats.queued,
                "capacity": stats.queue_capacity,
            },
            "counts": {
                "paused": stats.paused,
                "stashed": stats.stashed,
                "waiting": stats.waiting,
                "scheduled": stats.scheduled,
                "succeeded": stats.succeeded,
                "failed": stats.failed,
                "timed_out": stats.timed_out,
                "cancelled": stats.cancelled,
                "lost": stats.lost,
                "rejected": stats.rejected,
            },
            "throughput": {
                "done": rate,
                "arrivals": metrics.arrival_rate,
                "completion": metrics.completion_rate,
                "exec_p50": metrics.exec_p50,
                "exec_p99": metrics.exec_p99,
                "wait_avg": metrics.wait_avg,
            },
            "groups": [g.to_json() for g in stats.groups],
            "schedules": self._schedules,
        }
        self.header_version += 1
        self.pushed.bump()

    # -- what a browser is pushed ------------------------------------------------------------

    def samples_after(self, seq: int) -> list[dict[str, Any]]:
        """The samples newer than ``seq`` (all of them for 0)."""
        return [s for s in self.samples if s["seq"] > seq]


async def follow_task(
    client: AsyncClient, task_id: int, *, flush_every: float = 0.1
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A task's page, live: ``("record", record)`` whenever it changes, ``("output", {"stream",
    "text"})`` with the chunks that came in each ``flush_every`` seconds (as ``logs -f`` prints
    them, stdout and stderr apart), and last ``("end", record)`` with the truncation flags."""
    t = await client.get(task_id)
    yield "record", row(t)
    if t.done:
        t = await client.get(task_id, output=True)
        for stream in ("stdout", "stderr"):
            data: bytes = getattr(t, stream)
            if data:
                yield "output", {"stream": stream, "text": data.decode(errors="replace")}
        yield "end", row(t)
        return
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def read() -> None:
        try:
            async for ev in client.stream_results([task_id], output=True):
                inbox.put_nowait(ev)
        except TaskerError as err:
            inbox.put_nowait(err)
        inbox.put_nowait(None)

    reader = asyncio.ensure_future(read())
    decoders = {s: _decoder() for s in ("stdout", "stderr")}
    seen_output = False
    try:
        while True:
            item = await inbox.get()
            items = [item]
            await asyncio.sleep(flush_every)  # let chunks gather: one push per stream
            while not inbox.empty():
                items.append(inbox.get_nowait())
            chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}
            refresh = False
            final: TaskResult | None = None
            ended = False
            for ev in items:
                if ev is None:
                    ended = True
                elif isinstance(ev, TaskerError):
                    yield "failure", {"message": ev.message}
                elif ev.kind == "output" and ev.stream is not None:
                    seen_output = True
                    chunks[ev.stream].append(decoders[ev.stream](ev.data, False))
                elif ev.kind == "finished":
                    final = ev.result
                else:
                    refresh = True
            for stream, parts in chunks.items():
                if text := "".join(parts):
                    yield "output", {"stream": stream, "text": text}
            if final is not None:
                if not seen_output:  # it ended before we looked: what the daemon kept
                    for stream in ("stdout", "stderr"):
                        data = getattr(final, stream)
                        if data:
                            text = data.decode(errors="replace")
                            yield "output", {"stream": stream, "text": text}
                yield "end", row(final)
                return
            if refresh:
                yield "record", row(await client.get(task_id))
            if ended:
                yield "end", row(await client.get(task_id))
                return
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


def _decoder() -> Callable[[bytes, bool], str]:
    import codecs

    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode


def query_from(params: Mapping[str, str]) -> Query:
    """A :class:`Query` from a plain mapping (one value per key)."""
    return Query.parse(params.get, lambda k: [params[k]] if k in params else [])

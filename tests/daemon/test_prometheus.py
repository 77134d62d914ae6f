"""Prometheus ``/metrics`` (issue 13): families, labels and values, scraped over real HTTP and
parsed with ``prometheus_client``'s own parser.

Most tests run the module in-process: a real :class:`~taskerd.core.Core` over a real journal,
running real commands, and :func:`taskerd.prom.serve` on a free port of 127.0.0.1. The last ones
start a real ``taskerd`` with ``metrics_address`` (they need its wiring in ``taskerd.server``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tasker.v1 import tasker_pb2 as pb
from taskerd import prom
from taskerd.config import DaemonConfig, GroupConfig
from taskerd.core import Core
from taskerd.errors import JournalFull, QueueFull, ShuttingDown
from taskerd.store import Store
from tests.conftest import Daemon
from tests.daemon.util import spec, submit, wait

SLOW = "slow"  # one slot, held by a sleeping task: what is queued behind it stays queued
TINY = "tiny"  # one slot, a queue of one
DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "tasker.json"
ALLOWED_LABELS = {"state", "group", "priority", "kind", "reason", "le", "version", "python"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(text: str) -> dict[str, Metric]:
    return {m.name: m for m in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], name: str, sample: str = "", **labels: str) -> float:
    """The value of the one sample ``sample`` (default: the family's name) with ``labels``."""
    family = families[name]
    wanted = sample or name
    found = [s.value for s in family.samples if s.name == wanted and s.labels == labels]
    assert len(found) == 1, (wanted, labels, family.samples)
    return found[0]


def rejected(families: dict[str, Metric]) -> dict[str, float]:
    """``tasker_submit_rejected_total`` by reason."""
    family = families["tasker_submit_rejected"]
    return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}


def histogram(families: dict[str, Metric], name: str) -> tuple[float, float, list[float]]:
    """(count, sum, cumulative bucket counts in order) of an unlabelled histogram."""
    family = families[name]
    assert family.type == "histogram"
    buckets = [s for s in family.samples if s.name == f"{name}_bucket"]
    assert buckets[-1].labels == {"le": "+Inf"}
    counts = [s.value for s in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    count = value(families, name, f"{name}_count")
    assert counts[-1] == count
    return count, value(families, name, f"{name}_sum"), counts


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


class Running:
    """A core, its journal and its /metrics endpoint, in this process."""

    def __init__(self, core: Core, store: Store, server: prom.MetricsServer) -> None:
        self.core, self.store, self.server = core, store, server
        host, port = server.address
        self.url = f"http://{host}:{port}/metrics"

    async def scrape(self) -> dict[str, Metric]:
        status, kind, body = await asyncio.to_thread(get, self.url)
        assert status == 200
        assert kind.startswith("text/plain; version=0.0.4")
        return parse(body)

    async def ended(self, n: int, timeout: float = 20.0) -> None:
        """Until ``n`` tasks have ended since the start."""
        deadline = time.monotonic() + timeout
        while sum(self.core.counters.by_state.values()) < n:
            assert time.monotonic() < deadline, self.core.counters
            await asyncio.sleep(0.01)

    async def running(self, group: str, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.core.groups[group].counters.running < n:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config = DaemonConfig(
        socket=tmp_path / "taskerd.sock", state_dir=tmp_path / "state", workers=2,
        max_workers=2, max_queue=1000, cgroups="off", stop_timeout=3.0, kill_grace=1.0,
        groups={SLOW: GroupConfig(parallel=1), TINY: GroupConfig(parallel=1, max_queue=1)},
    )  # fmt: skip
    store = await Store.open(tmp_path / "journal.sqlite3")
    core = await Core.start(config, store)
    server = await prom.serve(core, "127.0.0.1:0")
    try:
        yield Running(core, store, server)
    finally:
        await server.close()
        if core.shutdown_mode is None:
            await core.shutdown(pb.SHUTDOWN_MODE_KILL)
        await store.close()


# ---- in-process ------------------------------------------------------------------------------


async def test_counts_by_state_and_group_queued_by_priority_and_histograms(
    running: Running,
) -> None:
    core = running.core
    await core.submit([spec("true")] * 5 + [spec("false")] * 2)
    await core.submit([spec("sleep", "30", group=SLOW)])
    await running.ended(7)
    await running.running(SLOW, 1)
    queued_ids = await core.submit(
        [spec("true", group=SLOW, priority=pb.PRIORITY_HIGH)] * 3
        + [spec("true", group=SLOW, priority=pb.PRIORITY_LOW)]
    )
    m = await running.scrape()

    assert m["tasker_tasks"].type == "counter"
    assert value(m, "tasker_tasks", "tasker_tasks_total", state="succeeded", group="default") == 5
    assert value(m, "tasker_tasks", "tasker_tasks_total", state="failed", group="default") == 2
    assert value(m, "tasker_tasks", "tasker_tasks_total", state="succeeded", group=SLOW) == 0
    assert {s.labels["state"] for s in m["tasker_tasks"].samples} == {
        "succeeded", "failed", "timed_out", "cancelled", "lost",
    }  # fmt: skip
    for priority, n in (("high", 3), ("low", 1), ("normal", 0), ("critical", 0)):
        assert value(m, "tasker_tasks_queued", priority=priority, group=SLOW) == n
        assert value(m, "tasker_tasks_queued", priority=priority, group="default") == 0
    assert value(m, "tasker_tasks_running", group=SLOW) == 1
    assert value(m, "tasker_tasks_running", group="default") == 0
    assert value(m, "tasker_workers", kind="base", group="default") == 2
    assert value(m, "tasker_workers", kind="base", group=SLOW) == 1
    assert value(m, "tasker_workers", kind="burst", group="default") == 0
    assert value(m, "tasker_workers", kind="active", group=SLOW) == 1
    assert value(m, "tasker_workers", kind="idle", group=SLOW) == 0
    assert value(m, "tasker_queue_capacity", group=TINY) == 1

    wait_count, wait_sum, _ = histogram(m, "tasker_task_wait_seconds")
    run_count, run_sum, run_buckets = histogram(m, "tasker_task_run_seconds")
    assert wait_count == run_count == 7  # the sleeping task has not ended
    assert wait_sum >= 0 and 0 < run_sum < 30
    assert run_buckets[0] < 7 or run_sum < 0.005 * 7  # ``le`` is an upper bound
    commits, commit_sum, _ = histogram(m, "tasker_journal_commit_seconds")
    assert commits >= 3 and commit_sum > 0  # the submits and ends were committed
    [info] = m["tasker_build_info"].samples
    assert info.value == 1 and info.labels["version"] and info.labels["python"]
    assert value(m, "tasker_shutting_down") == 0

    # Tasks that never ran end counted, with no wait or run time.
    await core.cancel(queued_ids)
    m = await running.scrape()
    assert value(m, "tasker_tasks", "tasker_tasks_total", state="cancelled", group=SLOW) == 4
    assert value(m, "tasker_tasks_queued", priority="high", group=SLOW) == 0
    assert histogram(m, "tasker_task_wait_seconds")[0] == 7
    assert histogram(m, "tasker_task_run_seconds")[0] == 7


async def test_held_and_paused_tasks(running: Running) -> None:
    core = running.core
    await core.submit([spec("true")] * 2, stashed=True)
    m = await running.scrape()
    assert value(m, "tasker_tasks_held", state="stashed", group="default") == 2
    assert value(m, "tasker_tasks_held", state="waiting", group="default") == 0
    assert value(m, "tasker_tasks_queued", priority="normal", group="default") == 0
    assert value(m, "tasker_group_paused", group="default") == 0


async def test_rejections_by_reason_counted_once(running: Running) -> None:
    core = running.core
    await core.submit([spec("sleep", "30", group=TINY)])
    await running.running(TINY, 1)
    await core.submit([spec("true", group=TINY)])  # its queue of one is full now
    with pytest.raises(QueueFull):
        await core.submit([spec("true", group=TINY)] * 3)
    with pytest.raises(QueueFull):
        await core.submit([spec("true", group=TINY)])

    # The journal refuses: a real SQLITE_FULL (the database may not grow by a page).
    def cap(pages: int) -> Callable[[sqlite3.Connection], object]:
        return lambda conn: conn.execute(f"PRAGMA max_page_count = {pages}").fetchall()

    await running.store._write(cap(1))  # as low as it goes: the current size
    try:
        big = {"PATH": os.environ.get("PATH", "/bin"), "PAD": "x" * 200_000}
        with pytest.raises(JournalFull):
            await core.submit([spec("true", env=big)] * 2)
    finally:
        await running.store._write(cap(1 << 30))
    assert rejected(await running.scrape()) == {"queue_full": 4, "journal": 2, "shutting_down": 0}

    stopping = asyncio.create_task(core.shutdown(pb.SHUTDOWN_MODE_KILL))
    await asyncio.sleep(0)
    assert core.shutdown_mode is not None
    with pytest.raises(ShuttingDown):
        await core.submit([spec("true")] * 5)
    m = await running.scrape()
    await stopping
    assert rejected(m) == {"queue_full": 4, "journal": 2, "shutting_down": 5}
    assert value(m, "tasker_shutting_down") == 1


async def test_labels_stay_bounded(running: Running) -> None:
    core = running.core
    await core.submit([spec("true", labels={"job": f"j{i}", "id": str(i)}) for i in range(20)])
    await running.ended(20)
    m = await running.scrape()
    names = set()
    for family in m.values():
        if not family.name.startswith("tasker_"):
            continue
        for sample in family.samples:
            names |= set(sample.labels)
            assert not any(v.startswith("j") and v[1:].isdigit() for v in sample.labels.values())
    assert names <= ALLOWED_LABELS
    groups = {s.labels["group"] for s in m["tasker_tasks"].samples}
    assert groups == {"default", SLOW, TINY}
    assert any(name.startswith("process_") for name in m)  # the process collector


async def test_http_endpoint(running: Running) -> None:
    host, port = running.server.address
    base = f"http://{host}:{port}"
    status, _, body = await asyncio.to_thread(get, f"{base}/")
    assert status == 404 and "/metrics" in body
    status, _, _ = await asyncio.to_thread(get, f"{base}/metrics/x")
    assert status == 404
    status, _, body = await asyncio.to_thread(get, f"{base}/metrics?name[]=tasker_tasks_total")
    assert status == 200 and "tasker_tasks_total" in body

    def keep_alive() -> list[tuple[int, int, str | None]]:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        got = []
        try:
            for method in ("GET", "HEAD", "POST", "GET"):
                conn.request(method, "/metrics")
                r = conn.getresponse()
                got.append((r.status, len(r.read()), r.getheader("Allow")))
        finally:
            conn.close()
        return got

    (s1, n1, _), (s2, n2, _), (s3, _, allow), (s4, n4, _) = await asyncio.to_thread(keep_alive)
    assert (s1, s2, s3, s4) == (200, 200, 405, 200)
    assert n1 > 0 and n2 == 0 and n4 > 0  # HEAD: headers only
    assert allow == "GET, HEAD"

    def garbage() -> bytes:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"NONSENSE\r\n\r\n")
            return s.recv(1000)

    assert (await asyncio.to_thread(garbage)).startswith(b"HTTP/1.1 400")


async def test_close_detaches_and_stops_listening(tmp_path: Path) -> None:
    config = DaemonConfig(
        socket=tmp_path / "s", state_dir=tmp_path / "state", workers=1, cgroups="off"
    )
    store = await Store.open(tmp_path / "journal.sqlite3")
    core = await Core.start(config, store)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(OSError):
                await prom.serve(core, f"127.0.0.1:{taken.getsockname()[1]}")
        assert core.prom is None and store.on_commit is None  # nothing left attached
        port = free_port()
        server = await prom.serve(core, f"127.0.0.1:{port}")
        assert server.address == ("127.0.0.1", port)
        assert core.prom is server.metrics and store.on_commit is not None
        with pytest.raises(RuntimeError):
            prom.Metrics(core)  # one per core
        assert core.prom is server.metrics
        await server.close()
        await server.close()
        assert core.prom is None and store.on_commit is None
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        await core.submit([spec("true")])  # the task path without metrics
        again = await prom.serve(core, "127.0.0.1:0")  # and with them again
        await again.close()
    finally:
        await core.shutdown(pb.SHUTDOWN_MODE_KILL)
        await store.close()


async def test_grafana_dashboard_uses_only_served_metrics(running: Running) -> None:
    await running.core.submit([spec("true")])
    await running.ended(1)
    served = {s.name for family in (await running.scrape()).values() for s in family.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\b(?:tasker|process)_\w+", e)}
    assert len(used) > 10 and used <= served, used - served
    for e in exprs:
        for left, right in ("()", "{}", "[]"):
            assert e.count(left) == e.count(right), e
    quantiles = [e for e in exprs if e.startswith("histogram_quantile(")]
    assert {m for e in quantiles for m in re.findall(r"tasker_\w+_seconds", e)} == {
        "tasker_task_wait_seconds", "tasker_task_run_seconds", "tasker_journal_commit_seconds",
    }  # fmt: skip


def test_parse_address() -> None:
    assert prom.parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert prom.parse_address("localhost:0") == ("localhost", 0)
    assert prom.parse_address("[::1]:9464") == ("::1", 9464)
    assert prom.parse_address(":9464") == (None, 9464)
    for bad in ("", "9464", "127.0.0.1", "host:port", "::1:9464", "h:70000", "h:-1"):
        with pytest.raises(ValueError, match="metrics_address"):
            prom.parse_address(bad)


def test_buckets() -> None:
    b = prom.Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        b.observe(v)
    family = b.family("x_seconds", "doc")
    got = {(s.name, s.labels.get("le", "")): s.value for s in family.samples}
    assert got == {
        ("x_seconds_bucket", "0.1"): 2,  # ``le``: an inclusive upper bound
        ("x_seconds_bucket", "1.0"): 4,
        ("x_seconds_bucket", "+Inf"): 5,
        ("x_seconds_count", ""): 5,
        ("x_seconds_sum", ""): pytest.approx(8.65),
    }
    with pytest.raises(ValueError):
        prom.Buckets((1.0, 0.5))


# ---- a real daemon (needs metrics_address wired in taskerd.server) ----------------------------


def scrape(port: int, timeout: float = 5.0) -> dict[str, Metric]:
    """The daemon's metrics (its endpoint may open a moment after its socket answers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, kind, body = get(f"http://127.0.0.1:{port}/metrics")
            break
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert status == 200 and kind.startswith("text/plain")
    return parse(body)


def names(families: Iterable[str]) -> set[str]:
    return {n for n in families if n.startswith("tasker_")}


def test_daemon_serves_metrics(make_daemon: type[Daemon]) -> None:
    port = free_port()
    d = make_daemon(
        "--workers", "2",
        config=f'metrics_address = "127.0.0.1:{port}"\n[groups.{SLOW}]\nparallel = 1\n',
    )  # fmt: skip
    ids = submit(d.stub, *[spec("true")] * 4, spec("false"))
    wait(d.stub, *ids)
    submit(d.stub, spec("sleep", "30", group=SLOW))
    submit(d.stub, *[spec("true", group=SLOW, priority=pb.PRIORITY_CRITICAL)] * 2)
    deadline = time.monotonic() + 15
    while True:
        m = scrape(port)
        if value(m, "tasker_tasks_running", group=SLOW) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert names(m) >= {
        "tasker_tasks", "tasker_tasks_queued", "tasker_tasks_running", "tasker_workers",
        "tasker_task_wait_seconds", "tasker_task_run_seconds", "tasker_submit_rejected",
        "tasker_journal_commit_seconds", "tasker_build_info",
    }  # fmt: skip
    assert value(m, "tasker_tasks", "tasker_tasks_total", state="succeeded", group="default") == 4
    assert value(m, "tasker_tasks", "tasker_tasks_total", state="failed", group="default") == 1
    assert value(m, "tasker_tasks_running", group=SLOW) == 1
    assert value(m, "tasker_tasks_queued", priority="critical", group=SLOW) == 2
    assert histogram(m, "tasker_task_run_seconds")[0] == 5
    assert histogram(m, "tasker_journal_commit_seconds")[0] > 0
    assert value(m, "tasker_workers", kind="base", group="default") == 2


def test_daemon_without_metrics_address_listens_on_nothing(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1")
    pid = d.proc.pid if d.proc else 0
    listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    inodes = {line.split()[9] for line in listening.splitlines()[1:] if line.split()[3] == "0A"}
    fds = Path(f"/proc/{pid}/fd")
    sockets = {os.readlink(fds / fd) for fd in os.listdir(fds)}
    assert not {s for s in sockets if s.startswith("socket:[") and s[8:-1] in inodes}

"""taskerd with a group on Dask (issue 14), against a real scheduler and two real workers.

The daemon's group ``cluster`` runs on Dask (``executor = "dask"``); ``default`` stays local.
Everything goes through the real clients and CLI: spread and TASKER_NODE, priorities with the
slots full, timeouts and cancels that leave no process, ``kill -9`` of a worker and of taskerd,
live output, backpressure, and TLS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from taskerctl import Client, QueueFull, TaskState
from tests.cluster.conftest import Cluster
from tests.conftest import Daemon
from tests.daemon.test_prometheus import free_port, parse
from tests.daemon.util import alive, until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(90)]

GROUP = "cluster"
SLOTS = 4  # two workers, slots=2 each


def daemon_config(cluster: Cluster, *more: str) -> str:
    lines = [
        f'dask_scheduler = "{cluster.address}"',
        "max_retries = 2",
        f"[groups.{GROUP}]",
        'executor = "dask"',
        "max_queue = 300",
        *more,
    ]
    if cluster.tls:
        lines[:0] = [
            f'dask_tls_ca = "{cluster.dir / "ca.pem"}"',
            f'dask_tls_cert = "{cluster.dir / "cert.pem"}"',
            f'dask_tls_key = "{cluster.dir / "key.pem"}"',
        ]
    return "\n".join(lines)


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def taskerd(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    metrics = f'metrics_address = "127.0.0.1:{METRICS_PORT}"'
    d = Daemon(tmp_path_factory.mktemp("taskerd"), "--workers", "2",
               config=metrics + "\n" + daemon_config(cluster))  # fmt: skip
    d.start(timeout=40)
    yield d
    d.stop()


@pytest.fixture
def c(taskerd: Daemon, cluster: Cluster) -> Iterator[Client]:
    cluster.wait_workers()
    with Client(taskerd.socket, rpc_timeout=30) as client:
        until(lambda: client.stats(group=GROUP).base_workers == SLOTS, 20, "the cluster's slots")
        yield client


def gone(marker: str, timeout: float = 15) -> None:
    """No process has ``marker`` on its command line (within ``timeout``)."""

    def none_left() -> bool:
        found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
        return found.stdout.strip() == ""

    until(none_left, timeout, f"processes of {marker!r} gone")


def test_tasks_spread_over_both_workers(c: Client) -> None:
    handles = c.submit_many([["sh", "-c", "echo $TASKER_NODE"]] * 200, group=GROUP)
    results = c.wait_many([h.id for h in handles], timeout=60, output=True)
    assert {r.state for r in results} == {TaskState.SUCCEEDED}
    nodes = {r.stdout.decode().strip() for r in results}
    assert nodes == {"w1", "w2"}
    assert {r.node for r in results} == {"w1", "w2"}
    local = c.submit(["sh", "-c", "echo ${TASKER_NODE:-here}"]).wait(timeout=10)
    assert local.stdout == b"here\n" and local.node == ""


def test_priorities_hold_with_the_slots_full(c: Client, tmp_path: Path) -> None:
    order = tmp_path / "order"
    # One slot frees first and the others much later, so the queued tasks run one at a time
    # in that slot, in the order the daemon hands them out (with several slots freed at once,
    # their appends to ``order`` would race).
    blockers = [c.submit(["sleep", "1.5" if i == 0 else "4"], group=GROUP) for i in range(SLOTS)]
    until(lambda: c.stats(group=GROUP).running == SLOTS, 10, "the slots full")
    queued = [
        c.submit(["sh", "-c", f"echo {p} >> {order}"], group=GROUP, priority=p)
        for p in ("low", "normal", "high", "critical", "low", "high")
    ]
    for h in [*blockers, *queued]:
        assert h.wait(timeout=30).state is TaskState.SUCCEEDED
    lines = order.read_text().split()
    rank = {"critical": 0, "high": 1, "normal": 2, "low": 3}
    assert [rank[x] for x in lines] == sorted(rank[x] for x in lines), lines


def test_timeout_leaves_no_process(c: Client) -> None:
    marker = "sleep 99.314"
    t = c.submit(["sh", "-c", f"{marker} & setsid {marker} & wait"], group=GROUP, timeout=1)
    result = t.wait(timeout=20)
    assert result.state is TaskState.TIMED_OUT, result
    gone(marker)


def test_cancel_of_a_running_remote_task(c: Client) -> None:
    marker = "sleep 98.271"
    t = c.submit(["sh", "-c", f"{marker} & setsid {marker} & wait"], group=GROUP)
    until(lambda: c.get(t.id).state is TaskState.RUNNING and c.get(t.id).node != "", 10, "start")
    t0 = time.monotonic()
    c.cancel(t.id)
    assert t.wait(timeout=15).state is TaskState.CANCELLED
    gone(marker)
    assert time.monotonic() - t0 < 1.0 + 5  # kill_grace is 1s in tests


def test_logs_follow_a_remote_task_in_order(c: Client, taskerd: Daemon) -> None:
    t = c.submit(["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.4; done"], group=GROUP)
    follow = subprocess.Popen(
        [sys.executable, "-m", "taskerctl", "logs", "-f", str(t.id), "--socket",
         str(taskerd.socket)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follow.stdout is not None
    first = follow.stdout.readline()
    assert first == "line 1\n"
    assert c.get(t.id).state is TaskState.RUNNING  # seen before it ended
    rest = follow.stdout.read()  # (communicate would skip what readline buffered)
    assert rest.splitlines() == ["line 2", "line 3"]
    assert follow.wait(timeout=20) == 0


def test_backpressure_still_answers_queue_full(c: Client) -> None:
    blockers = [c.submit(["sleep", "30"], group=GROUP) for _ in range(SLOTS)]
    until(lambda: c.stats(group=GROUP).running == SLOTS, 10, "the slots full")
    with pytest.raises(QueueFull):
        c.submit_many([["true"]] * 301, group=GROUP)
    c.cancel_many([h.id for h in blockers])
    for h in blockers:
        assert h.wait(timeout=20).state is TaskState.CANCELLED


def test_stats_show_the_cluster(c: Client) -> None:
    stats = c.stats()
    assert sorted(n.name for n in stats.nodes) == ["w1", "w2"]
    assert {n.slots for n in stats.nodes} == {2}
    assert c.stats(group=GROUP).base_workers == SLOTS
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
        families = parse(r.read().decode())
    slots = families["tasker_cluster_slots"].samples
    assert {s.labels["node"]: s.value for s in slots} == {"w1": 2.0, "w2": 2.0}


def _node_of(c: Client, task_id: int) -> str:
    until(lambda: c.get(task_id).node != "", 15, "the task on a node")
    return c.get(task_id).node


def test_kill_9_of_a_worker_mid_run(c: Client, cluster: Cluster, tmp_path: Path) -> None:
    ordinary_marker = tmp_path / "ordinary"
    once_marker = tmp_path / "once"
    ordinary = c.submit(["sh", "-c", f"echo x >> {ordinary_marker}; sleep 2"], group=GROUP)
    node = _node_of(c, ordinary.id)
    # the once task goes to the same worker: fill the other's slots first
    once = c.submit(["sh", "-c", f"echo x >> {once_marker}; sleep 30"], group=GROUP, once=True)
    once_node = _node_of(c, once.id)
    until(lambda: ordinary_marker.exists() and once_marker.exists(), 10, "both started")
    for name in {node, once_node}:
        os.kill(cluster.pid_of(name), signal.SIGKILL)
    again = ordinary.wait(timeout=60)
    assert again.state is TaskState.SUCCEEDED, again
    assert again.attempts == 2
    assert ordinary_marker.read_text() == "x\nx\n"
    lost = once.wait(timeout=60)
    assert lost.state is TaskState.LOST, lost
    assert once_marker.read_text() == "x\n"  # ran exactly once
    cluster.wait_workers()


def test_kill_9_of_taskerd_ends_its_remote_runs(c: Client, taskerd: Daemon, tmp_path: Path) -> None:
    pids = {name: tmp_path / name for name in ("ordinary", "once")}
    ordinary, once = (
        c.submit(["sh", "-c", f"echo $$ >> {pids[name]}; exec sleep 97"], group=GROUP,
                 once=name == "once")
        for name in ("ordinary", "once")
    )  # fmt: skip
    until(lambda: all(p.exists() and p.read_text() for p in pids.values()), 15, "both started")
    first = {name: int(p.read_text().split()[0]) for name, p in pids.items()}
    c.close()
    taskerd.kill9()
    assert all(alive(pid) for pid in first.values())  # a dead taskerd cannot end them
    taskerd.start(timeout=40)
    # The new taskerd ended the old runs on the workers before anything ran again.
    until(lambda: not any(alive(pid) for pid in first.values()), 15, "the old runs ended")
    with Client(taskerd.socket) as again:
        assert again.wait(once.id, timeout=20).state is TaskState.LOST
        until(lambda: len(pids["ordinary"].read_text().split()) == 2, 15, "the re-run")
        assert pids["once"].read_text().split() == [str(first["once"])]  # ran once
        again.cancel(ordinary.id)
        assert again.wait(ordinary.id, timeout=20).state is TaskState.CANCELLED


def test_tls_cluster(tls_cluster: Cluster, make_daemon: type[Daemon]) -> None:
    d = make_daemon(config=daemon_config(tls_cluster))
    with Client(d.socket) as client:
        until(lambda: client.stats(group=GROUP).base_workers == SLOTS, 20, "the slots")
        results = client.wait_many(
            [h.id for h in client.submit_many([["sh", "-c", "echo $TASKER_NODE"]] * 20,
                                              group=GROUP)], timeout=60, output=True,
        )  # fmt: skip
    assert {r.state for r in results} == {TaskState.SUCCEEDED}
    assert {r.stdout.decode().strip() for r in results} == {"w1", "w2"}

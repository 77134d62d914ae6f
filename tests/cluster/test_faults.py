"""The cluster fails under taskerd (issue 14): ``kill -9`` of the scheduler, and a worker
stopped (SIGSTOP) past its time to live. Each test has a cluster of its own, with the
scheduler on a fixed port (so that it can come back where the workers and taskerd look).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from taskerctl import Client, TaskState
from tests.cluster.conftest import Cluster
from tests.cluster.test_daemon import GROUP, SLOTS, daemon_config
from tests.conftest import Daemon
from tests.daemon.test_prometheus import free_port
from tests.daemon.util import alive, until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

#: A command that records its shell's pid, then runs long the first time and ends at once after.
FIRST_LONG = 'echo $$ >> {f}; [ "$(wc -l < {f})" -ge 2 ] || exec sleep 60'


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # A worker silent for 2 s is removed (the default is 5 minutes).
    ttl = {"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "2s"}
    c = Cluster(tmp_path / "cluster", port=free_port(), env=ttl)
    c.dir.mkdir()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def started(c: Client, files: dict[str, Path], ids: dict[str, int]) -> dict[str, int]:
    """Wait until each task runs on a node and wrote its pid; the first pid of each."""
    until(lambda: all(f.exists() and f.read_text() for f in files.values()), 20, "started")
    until(lambda: all(c.get(i).node for i in ids.values()), 20, "on their nodes")
    return {name: int(f.read_text().split()[0]) for name, f in files.items()}


def submit_pair(
    c: Client, tmp_path: Path
) -> tuple[dict[str, Path], dict[str, int], dict[str, int]]:
    """Once the cluster's slots are in, an ordinary and a ``--once`` task running (see
    FIRST_LONG): their pid files, their ids and their first pids."""
    until(lambda: c.stats(group=GROUP).base_workers == SLOTS, 20, "the cluster's slots")
    files = {name: tmp_path / name for name in ("ordinary", "once")}
    ids = {
        name: c.submit(["sh", "-c", FIRST_LONG.format(f=files[name])], group=GROUP,
                       once=name == "once").id
        for name in files
    }  # fmt: skip
    return files, ids, started(c, files, ids)


def test_kill_9_of_the_scheduler(
    cluster: Cluster, make_daemon: type[Daemon], tmp_path: Path
) -> None:
    d = make_daemon(config=daemon_config(cluster))
    with Client(d.socket, rpc_timeout=30) as c:
        files, ids, first = submit_pair(c, tmp_path)
        cluster.procs["scheduler"].send_signal(signal.SIGKILL)
        # A worker closes once its scheduler is lost, ending its runs; taskerd handles the
        # tasks in flight as after its own crash: LOST at most once, re-queued otherwise.
        assert c.wait(ids["once"], timeout=40).state is TaskState.LOST
        until(lambda: not any(alive(p) for p in first.values()), 30, "the runs ended")
        assert c.get(ids["ordinary"]).state in (TaskState.QUEUED, TaskState.RUNNING)
        cluster.start_scheduler()  # on the same port; and workers, as systemd would restart them
        for name in ("w1", "w2"):
            cluster.start_worker(name)
        again = c.wait(ids["ordinary"], timeout=60)
        assert again.state is TaskState.SUCCEEDED, again
        assert len(files["ordinary"].read_text().split()) == 2
        assert files["once"].read_text().split() == [str(first["once"])]  # ran once
        assert c.submit(["true"], group=GROUP).wait(timeout=30).state is TaskState.SUCCEEDED
    said = (
        "dask: lost the scheduler",
        ("dask: reconnected", "dask: connected to the scheduler again"),
    )
    until(lambda: said[0] in (log := d.log_path.read_text()) and any(s in log for s in said[1]),
          10, "the loss and the reconnection logged")  # fmt: skip


def test_sigstop_of_a_worker_past_its_ttl(
    cluster: Cluster, make_daemon: type[Daemon], tmp_path: Path
) -> None:
    d = make_daemon(config=daemon_config(cluster))
    with Client(d.socket, rpc_timeout=30) as c:
        files, ids, first = submit_pair(c, tmp_path)
        nodes = {c.get(i).node for i in ids.values()}
        for node in nodes:
            os.kill(cluster.pid_of(node), signal.SIGSTOP)
        try:
            lost = c.wait(ids["once"], timeout=60)
            assert lost.state is TaskState.LOST, lost
            if len(nodes) == 1:  # the other worker runs the ordinary task again
                again = c.wait(ids["ordinary"], timeout=60)
                assert again.state is TaskState.SUCCEEDED, again
                assert again.attempts == 2
        finally:
            for node in nodes:
                for proc in (cluster.procs[node],):  # the nanny's group: its worker too
                    os.killpg(proc.pid, signal.SIGCONT)
        # Resumed, the removed worker's runs end (it closes, or comes back and is told to).
        until(lambda: not any(alive(p) for p in first.values()), 30, "the stale runs ended")
        assert files["once"].read_text().split() == [str(first["once"])]  # ran once
        cluster.wait_workers(60)
        if len(nodes) == 2:
            assert c.wait(ids["ordinary"], timeout=60).state is TaskState.SUCCEEDED

"""The worker side of Tasker on Dask against a real scheduler and two real workers (no taskerd).

A plain ``distributed.Client`` submits :func:`taskerd.dask.worker.run_task`, as the daemon's
executor will: spread and TASKER_NODE, the timeout and cancel killing whole process trees,
at-most-once claims, live ordered output, ``kill -9`` of a worker, ending a previous daemon's
runs, and the same over TLS.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

from taskerd.dask import claims
from taskerd.dask.spec import REVOKED, RunSpec, to_exit
from taskerd.dask.worker import cancel, end_runs, run_task
from tests.cluster.conftest import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]

WAIT = 20.0  # for a result that should come within seconds


@pytest.fixture(scope="module", autouse=True)
def with_claims(cluster: Cluster) -> None:
    claims.register(cluster.client)


@pytest.fixture
def workers(cluster: Cluster) -> dict[str, str]:
    """Both workers up (a test may have killed one): name -> address."""
    return cluster.wait_workers()


_keys = iter(range(1, 1 << 30))


def make(argv: list[str], **options: Any) -> RunSpec:
    n = next(_keys)
    defaults: dict[str, Any] = {
        "task_id": n, "attempt": 1, "run_key": f"run-{os.getpid()}-{n}", "topic": "tasker-test",
        "kill_grace": 1.0,
    }  # fmt: skip
    return RunSpec(argv=argv, **{**defaults, **options})


def submit(client: Any, spec: RunSpec, key: str | None = None, **options: Any) -> Any:
    return client.submit(
        run_task,
        spec.to_dict(),
        key=key or spec.run_key,
        resources={"slots": 1},
        pure=False,
        retries=0,
        **options,
    )


_marks: list[str] = []


def marker() -> str:
    """A unique ``sleep`` duration, to find a test's processes with pgrep."""
    mark = f"97.{random.randrange(10**8):08d}"
    _marks.append(mark)
    return mark


def tree(mark: str, *, trap: bool = False) -> list[str]:
    """A shell with a child in its group and one that left it (setsid), all sleeping."""
    ignore = "trap '' TERM; " if trap else ""
    return ["sh", "-c", f"{ignore}sleep {mark} & setsid sleep {mark} & wait"]


def alive(mark: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"sleep {mark}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def gone(mark: str) -> None:
    """All processes of ``mark`` are gone (a killed one may take a moment to die)."""
    wait_for(lambda: not alive(mark), 1.0, f"{mark}: left behind")


def running(mark: str, count: int = 3) -> None:
    wait_for(lambda: len(alive(mark)) >= count, WAIT, f"{mark}: not started")


class Topic:
    """Events of one topic as they arrive, with their arrival time."""

    def __init__(self, client: Any, name: str) -> None:
        self.name = name
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        client.subscribe_topic(name, self._on)

    def _on(self, event: tuple[float, dict[str, Any]]) -> None:
        with self.lock:
            self.events.append((time.monotonic(), event[1]))

    def of(self, run_key: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, m) for t, m in self.events if m["run_key"] == run_key]


# ----------------------------------------------------------------------------------- tests


def test_200_true_tasks_spread_over_both_workers(cluster: Cluster, workers: dict[str, str]) -> None:
    specs = [make(["sh", "-c", 'printf %s "$TASKER_NODE"']) for _ in range(200)]
    results = cluster.client.gather([submit(cluster.client, s) for s in specs])
    assert all(r["started"] and r["exit_code"] == 0 for r in results)
    assert {r["stdout"].decode() for r in results} == set(workers) == {r["node"] for r in results}
    assert {r["address"] for r in results} == set(workers.values())
    exit = to_exit(results[0])
    assert exit is not None and exit.exit_code == 0 and exit.pid == results[0]["pid"]
    failed = submit(cluster.client, make(["/no/such/command"])).result(WAIT)
    assert not failed["started"] and failed["error"].startswith("spawn failed: /no/such/command")


def test_timeout_kills_the_whole_tree(cluster: Cluster, workers: dict[str, str]) -> None:
    mark = marker()
    spec = make(tree(mark), timeout=1.0, kill_grace=1.0)
    result = submit(cluster.client, spec).result(WAIT)
    assert result["started"] and result["timed_out"] and not result["cancelled"]
    assert result["killed_by_us"] and result["signal"] == signal.SIGTERM
    assert result["started_at"] is not None
    assert 0.9 <= result["ended_at"] - result["started_at"] < 3.0
    gone(mark)  # the shell, its child, and the one that left the group


def test_cancel_kills_the_tree_within_kill_grace(cluster: Cluster, workers: dict[str, str]) -> None:
    client = cluster.client
    mark, stubborn = marker(), marker()
    quick = submit(client, spec := make(tree(mark), kill_grace=2.0))
    slow = submit(client, slow_spec := make(tree(stubborn, trap=True), kill_grace=1.0))
    running(mark)
    running(stubborn)

    began = time.monotonic()
    assert cancel(client, spec.run_key) is True
    wait_for(lambda: not alive(mark), 2.0, "cancelled tree still alive")
    assert time.monotonic() - began < 1.5  # it takes SIGTERM: no need to wait the grace
    result = quick.result(WAIT)
    assert result["cancelled"] and result["started"] and result["killed_by_us"]
    assert result["signal"] == signal.SIGTERM

    began = time.monotonic()
    assert cancel(client, slow_spec.run_key) is True
    wait_for(lambda: not alive(stubborn), 3.0, "TERM-proof tree still alive")
    took = time.monotonic() - began
    assert 0.8 <= took < 2.5  # SIGKILL after its kill_grace (1 s)
    result = slow.result(WAIT)
    assert result["cancelled"] and result["signal"] == signal.SIGKILL
    assert cancel(client, slow_spec.run_key) is False  # over: nothing to cancel


def test_second_claim_never_spawns(
    cluster: Cluster, workers: dict[str, str], tmp_path: Path
) -> None:
    client = cluster.client
    for once in (True, False):
        ran = tmp_path / f"ran-{once}"
        spec = make(["sh", "-c", f"echo x >> {ran}"], once=once)
        first = submit(client, spec, key=f"{spec.run_key}-a").result(WAIT)
        claims.register(client)  # again: idempotent, the claims stay
        second = submit(client, spec, key=f"{spec.run_key}-b").result(WAIT)
        assert first["started"] and first["claimed"] and first["exit_code"] == 0
        assert not second["started"] and not second["claimed"]
        assert second["claimed_by"] == first["address"]
        assert "claimed elsewhere" in second["error"] and to_exit(second) is None
        assert ran.read_text() == "x\n"  # exactly once
        assert claims.lookup(client, [spec.run_key]) == {spec.run_key: first["address"]}

    # A revoked run (cancelled before any worker took it) never starts either.
    spec = make(["sh", "-c", f"echo x >> {tmp_path / 'revoked'}"], once=True)
    assert claims.revoke(client, [spec.run_key]) == {spec.run_key: ""}
    result = submit(client, spec).result(WAIT)
    assert not result["started"] and result["claimed_by"] == REVOKED
    assert not (tmp_path / "revoked").exists()

    # The claim goes once Dask forgets the key (= run key) of its submission.
    spec = make(["true"])
    future = submit(client, spec)
    assert future.result(WAIT)["started"]
    assert claims.lookup(client, [spec.run_key]) == {spec.run_key: future.result()["address"]}
    del future
    wait_for(lambda: not claims.lookup(client, [spec.run_key]), 5.0, "claim not dropped")


def test_output_streams_live_in_order(cluster: Cluster, workers: dict[str, str]) -> None:
    client = cluster.client
    topic = Topic(client, f"live-{os.getpid()}")
    spec = make(["sh", "-c", "echo a; sleep 1; echo b; echo c >&2"], topic=topic.name)
    future = submit(client, spec)
    wait_for(lambda: future.done(), WAIT, "no result")
    done = time.monotonic()
    result = future.result()
    last = result["last_seq"] + 1  # the finished event
    wait_for(lambda: len(topic.of(spec.run_key)) == last, 5.0, "events missing")
    events = topic.of(spec.run_key)
    assert [m["seq"] for _, m in events] == list(range(1, last + 1))
    kinds = [m["type"] for _, m in events]
    assert kinds[0] == "started" and set(kinds[1:-1]) == {"output"} and kinds[-1] == "finished"
    assert events[-1][1]["result"] == {**result, "stdout": b"", "stderr": b""}
    started = events[0][1]
    assert (started["pid"], started["node"]) == (result["pid"], result["node"])
    arrived_a = next(t for t, m in events if m["type"] == "output" and m["data"] == b"a\n")
    assert done - arrived_a > 0.5  # 'a' came about a second before the end
    out = b"".join(m["data"] for _, m in events if m["type"] == "output" and m["stream"] == 1)
    err = b"".join(m["data"] for _, m in events if m["type"] == "output" and m["stream"] == 2)
    assert (out, err) == (b"a\nb\n", b"c\n") == (result["stdout"], result["stderr"])


def test_output_is_batched_and_capped(cluster: Cluster, workers: dict[str, str]) -> None:
    client = cluster.client
    topic = Topic(client, f"batched-{os.getpid()}")
    # 20 lines written 10 ms apart: batched by 100 ms, a few events, not 20.
    count = "i=0; while [ $i -lt 20 ]; do echo $i; sleep 0.01; i=$((i+1)); done"
    lines = make(["sh", "-c", count], topic=topic.name)
    capped = make(["sh", "-c", "head -c 100000 /dev/zero"], topic=topic.name, output_limit=1000)
    r1, r2 = client.gather([submit(client, lines), submit(client, capped)])
    wait_for(lambda: len(topic.of(capped.run_key)) == r2["last_seq"] + 1, 5.0, "events missing")
    wait_for(lambda: len(topic.of(lines.run_key)) == r1["last_seq"] + 1, 5.0, "events missing")
    expected = "".join(f"{i}\n" for i in range(20)).encode()
    assert b"".join(m.get("data", b"") for _, m in topic.of(lines.run_key)) == expected
    assert r1["stdout"] == expected and not r1["stdout_truncated"]
    took = r1["ended_at"] - (r1["started_at"] or 0)
    outputs = r1["last_seq"] - 1  # after "started"
    assert 1 <= outputs < 20 and outputs <= took / 0.1 + 2  # one per 100 ms at most
    assert r2["stdout_truncated"] and not r2["stderr_truncated"]
    assert r2["stdout"] == b"\0" * 1000
    assert b"".join(m.get("data", b"") for _, m in topic.of(capped.run_key)) == b"\0" * 1000


def test_end_runs_ends_other_epochs(cluster: Cluster, workers: dict[str, str]) -> None:
    client = cluster.client
    old_mark, new_mark = marker(), marker()
    old = submit(client, old_spec := make(tree(old_mark), epoch="old"))
    new = submit(client, new_spec := make(tree(new_mark), epoch="new"))
    running(old_mark)
    running(new_mark)
    ended = client.run(end_runs, "new")  # the new daemon, on every worker
    assert sorted(k for keys in ended.values() for k in keys) == [old_spec.run_key]
    gone(old_mark)  # end_runs returns once they are ended
    assert old.result(WAIT)["cancelled"]
    assert len(alive(new_mark)) == 3 and not new.done()
    assert cancel(client, new_spec.run_key)
    assert new.result(WAIT)["cancelled"]
    gone(new_mark)


def test_kill_9_of_a_worker_leaves_no_process(cluster: Cluster, workers: dict[str, str]) -> None:
    client = cluster.client
    mark, stubborn = marker(), marker()
    spec = make(tree(mark), once=True)
    future = submit(client, spec, workers=[workers["w1"]], allow_other_workers=True)
    other = submit(client, make(tree(stubborn, trap=True)), workers=[workers["w1"]])
    running(mark)
    running(stubborn)
    os.kill(cluster.pid_of("w1"), signal.SIGKILL)
    # Its keeper ends the runs' processes: SIGTERM, and SIGKILL after kill_grace (1 s).
    wait_for(lambda: not alive(mark), 3.0, "the dead worker's task processes are left")
    wait_for(lambda: not alive(stubborn), 4.0, "the dead worker's TERM-proof tree is left")
    # Dask runs it again elsewhere: the claim is held by the dead worker, so it does not spawn.
    result = future.result(WAIT)
    assert not result["started"] and result["claimed_by"] == workers["w1"]
    other.cancel()
    wait_for(lambda: cluster.workers().get("w1") not in (None, workers["w1"]), WAIT, "no new w1")

    # kill -9 of a worker's nanny: Dask makes the worker process exit at once; same ending.
    mark = marker()
    submit(client, make(tree(mark)), workers=[workers["w2"]])
    running(mark)
    os.kill(cluster.procs["w2"].pid, signal.SIGKILL)
    wait_for(lambda: not alive(mark), 3.0, "the orphaned worker's task processes are left")
    cluster.start_worker("w2")
    cluster.wait_workers()


def test_tls_cluster(tls_cluster: Cluster) -> None:
    client = tls_cluster.client  # the claims plugin comes from the scheduler's --preload
    workers = tls_cluster.wait_workers()
    assert all(a.startswith("tls://") for a in workers.values())
    topic = Topic(client, "tls")
    specs = [make(["sh", "-c", 'echo "$TASKER_NODE"'], topic="tls", once=True) for _ in range(8)]
    results = client.gather([submit(client, s) for s in specs])
    assert all(r["claimed"] and r["started"] for r in results)
    assert {r["stdout"] for r in results} == {b"w1\n", b"w2\n"}
    wait_for(lambda: len(topic.of(specs[-1].run_key)) == 3, 5.0, "events missing")
    mark = marker()
    future = submit(client, spec := make(tree(mark)))
    running(mark)
    assert cancel(client, spec.run_key)
    assert future.result(WAIT)["cancelled"]
    gone(mark)


@pytest.fixture(autouse=True)
def no_task_left() -> Iterator[None]:
    """After each test, none of its task processes is left."""
    _marks.clear()
    yield
    assert [m for m in _marks if alive(m)] == []

"""kill -9 loses nothing accepted; backpressure; shutdown modes."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import TERMINAL, poll_state, spec, submit, wait


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_kill9_loses_no_accepted_task(make_daemon: type[Daemon], sync: str) -> None:
    d = make_daemon("--workers", "4", "--max-workers", "4", config=f'journal_sync = "{sync}"\n')
    accepted: list[int] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            task = spec("sleep 0.02", shell=True, once=(i % 5 == 0))
            try:
                accepted.extend(d.stub.Submit(pb.SubmitRequest(tasks=[task] * 5), timeout=5).ids)
            except grpc.RpcError:
                return  # the daemon died: from here on, nothing was accepted
            stop.wait(0.02)  # a few hundred tasks, not thousands: the drain after is the cost

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.6)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(accepted) > 20
    d.start()
    done = wait(d.stub, *accepted, timeout=120)
    states = {t.state for t in done.values()}
    assert states <= TERMINAL
    assert states <= {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_LOST}
    lost = [t for t in done.values() if t.state == pb.TASK_STATE_LOST]
    assert all(t.spec.once for t in lost), "only at-most-once tasks may be LOST"
    rerun = [t for t in done.values() if t.attempts > 1]
    assert all(not t.spec.once for t in rerun)
    [new] = submit(d.stub, spec("true"))
    assert new > max(accepted), "ids keep increasing after a crash"


def test_queued_tasks_resume_in_priority_order(make_daemon: type[Daemon], tmp_path: Path) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    log = tmp_path / "order.log"
    [blocker] = submit(d.stub, spec("sleep", "300"))
    poll_state(d.stub, blocker, {pb.TASK_STATE_RUNNING})
    ids = submit(
        d.stub,
        spec(f"echo low >> {log}", shell=True, priority=pb.PRIORITY_LOW),
        spec(f"echo high >> {log}", shell=True, priority=pb.PRIORITY_HIGH),
        spec(f"echo normal >> {log}", shell=True),
    )
    d.kill9()
    d.start()
    assert d.stub.Cancel(pb.CancelRequest(id=blocker)).cancelled, "it was re-queued"
    done = wait(d.stub, blocker, *ids)
    assert done[blocker].state == pb.TASK_STATE_CANCELLED
    assert log.read_text().split() == ["high", "normal", "low"]


def test_backpressure(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1", "--max-queue", "3")
    [running] = submit(d.stub, spec("sleep", "300"))
    poll_state(d.stub, running, {pb.TASK_STATE_RUNNING})
    queued = submit(d.stub, spec("true"), spec("true"), spec("true"))
    with pytest.raises(grpc.RpcError) as err:
        submit(d.stub, spec("true"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == "queue full (3/3)"
    with pytest.raises(grpc.RpcError):
        d.stub.Submit(pb.SubmitRequest(tasks=[spec("true")] * 2))
    stats = d.stub.Stats(pb.StatsRequest())
    assert stats.queued == 3 and stats.queue_capacity == 3 and stats.queue_usage == 1.0
    assert stats.rejected == 3
    d.stub.Cancel(pb.CancelRequest(id=running))
    wait(d.stub, running, *queued)
    assert submit(d.stub, spec("true"))


def test_shutdown_kill_cancels_everything(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    running, queued = submit(d.stub, spec("sleep", "300"), spec("true"))
    poll_state(d.stub, running, {pb.TASK_STATE_RUNNING})
    d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_KILL))
    assert d.proc is not None and d.proc.wait(20) == 0
    d.start()
    for task_id in (running, queued):
        assert d.stub.Get(pb.GetRequest(id=task_id)).state == pb.TASK_STATE_CANCELLED


def test_shutdown_drain_finishes_queue(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    ids = submit(d.stub, spec("sleep", "0.2"), spec("true"), spec("true"))
    d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_DRAIN))
    with pytest.raises(grpc.RpcError) as err:
        for _ in range(50):
            submit(d.stub, spec("true"))
            time.sleep(0.01)
    assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
    assert d.proc is not None and d.proc.wait(20) == 0
    d.start()
    for task_id in ids:
        assert d.stub.Get(pb.GetRequest(id=task_id)).state == pb.TASK_STATE_SUCCEEDED


def test_sigterm_keeps_queue_for_next_start(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    running, queued = submit(d.stub, spec("sleep", "0.3"), spec("echo", "later"))
    poll_state(d.stub, running, {pb.TASK_STATE_RUNNING})
    assert d.stop() == 0
    d.start()
    done = wait(d.stub, running, queued)
    assert done[running].state == pb.TASK_STATE_SUCCEEDED
    assert done[queued].state == pb.TASK_STATE_SUCCEEDED


def test_second_sigterm_kills(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", config='stop_timeout = "60s"\n')
    [running] = submit(d.stub, spec("sleep", "300"))
    poll_state(d.stub, running, {pb.TASK_STATE_RUNNING})
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert d.proc.poll() is None, "the first SIGTERM waits for the running task"
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    d.start()
    assert d.stub.Get(pb.GetRequest(id=running)).state == pb.TASK_STATE_CANCELLED


def test_once_task_is_lost_not_rerun_after_crash(make_daemon: type[Daemon], tmp_path: Path) -> None:
    d = make_daemon("--workers", "2")
    runs = tmp_path / "runs"
    once, again = submit(
        d.stub,
        spec(f"echo once >> {runs}; sleep 300", shell=True, once=True),
        spec(f"echo again >> {runs}; sleep 300", shell=True),
    )
    poll_state(d.stub, once, {pb.TASK_STATE_RUNNING})
    poll_state(d.stub, again, {pb.TASK_STATE_RUNNING})
    time.sleep(0.3)  # past the delayed RUNNING write of the ordinary task
    d.kill9()
    d.start()
    assert d.stub.Get(pb.GetRequest(id=once)).state == pb.TASK_STATE_LOST
    rerun = poll_state(d.stub, again, {pb.TASK_STATE_RUNNING})
    assert rerun.attempts == 2, "the interrupted attempt counts"
    d.stub.Cancel(pb.CancelRequest(id=again))
    wait(d.stub, again)
    assert runs.read_text().split().count("once") == 1

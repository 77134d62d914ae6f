"""Bulk verbs and retries on the daemon: cancel by selection, waiting for every live task (past
the 10,000-id limit), failed attempts run again, and metrics that count outcomes as Stats does."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import poll_state, spec, submit, wait

QUEUED, RUNNING = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING


def test_failed_attempts_run_again_up_to_retries(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "tried"
    flaky = f"test -f {marker} || {{ touch {marker}; exit 1; }}"
    [always, once_flaky] = submit(
        daemon.stub,
        spec("sleep 0.3; exit 1", shell=True, retries=2),
        spec(flaky, shell=True, retries=3),
    )
    events = list(daemon.stub.StreamResults(pb.StreamResultsRequest(ids=[always]), timeout=30))
    done = wait(daemon.stub, always, once_flaky)
    assert done[always].state == pb.TASK_STATE_FAILED and done[always].attempts == 3
    assert [e.retrying.attempt for e in events if e.WhichOneof("kind") == "retrying"] == [1, 2]
    assert done[once_flaky].state == pb.TASK_STATE_SUCCEEDED and done[once_flaky].attempts == 2
    [timed] = submit(daemon.stub, spec("sleep", "5", timeout=0.3, retries=3))
    assert wait(daemon.stub, timed)[timed].attempts == 1  # a timeout is not a failure to retry
    with pytest.raises(grpc.RpcError) as bad:
        submit(daemon.stub, spec("true", once=True, retries=1))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tasks[0].retries" in (bad.value.details() or "")


def test_metrics_count_outcomes_like_stats(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "2")
    ids = submit(d.stub, *[spec("false") for _ in range(4)], spec("true"))
    wait(d.stub, *ids)
    m = d.stub.Metrics(pb.MetricsRequest(), timeout=5)
    s = d.stub.Stats(pb.StatsRequest(), timeout=5)
    assert (m.completed, m.failed, s.failed, s.succeeded) == (5, 4, 4, 1)
    assert m.success_rate == pytest.approx(0.2) and m.failure_rate == pytest.approx(0.8)


def test_cancel_selects_by_label_state_or_all(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", config="max_workers = 1")
    [blocker] = submit(d.stub, spec("sleep", "30", labels={"team": "a"}))
    poll_state(d.stub, blocker, {RUNNING})
    a = submit(d.stub, *[spec("true", labels={"team": "a"}) for _ in range(3)])
    b = submit(d.stub, *[spec("true", labels={"team": "b"}) for _ in range(3)])
    resp = d.stub.Cancel(pb.CancelRequest(labels={"team": "a"}, states=[QUEUED]), timeout=10)
    assert sorted(r.id for r in resp.results) == a  # queued ones of team a, not the runner
    assert d.stub.Get(pb.GetRequest(id=blocker), timeout=5).state == RUNNING
    resp = d.stub.Cancel(pb.CancelRequest(all=True), timeout=10)
    assert sorted(r.id for r in resp.results) == sorted([blocker, *b])
    done = wait(d.stub, blocker, *a, *b)
    assert {t.state for t in done.values()} == {pb.TASK_STATE_CANCELLED}
    empty = d.stub.Cancel(pb.CancelRequest(all=True), timeout=10)
    assert not empty.results and not empty.cancelled
    with pytest.raises(grpc.RpcError) as bad:
        d.stub.Cancel(pb.CancelRequest(), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_wait_for_every_live_task_past_the_id_limit(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", config="max_workers = 1")
    [blocker] = submit(d.stub, spec("sleep", "30"))
    queued: list[int] = []
    for _ in range(2):
        req = pb.SubmitRequest(tasks=[pb.TaskSpec(argv=["true"])] * 6000)
        queued += d.stub.Submit(req, timeout=30).ids
    seen: list[int] = []
    ready = threading.Event()

    def waiter() -> None:
        call = d.stub.StreamResults(
            pb.StreamResultsRequest(all_live=True, finished_only=True), timeout=120
        )
        ready.set()
        seen.extend(e.task_id for e in call)

    thread = threading.Thread(target=waiter)
    thread.start()
    ready.wait(10)
    d.stub.Cancel(pb.CancelRequest(ids=[blocker]), timeout=10)  # the rest then runs ...
    time.sleep(0.2)
    d.stub.Cancel(pb.CancelRequest(all=True), timeout=30)  # ... or is cancelled, as it ends sooner
    thread.join(120)
    assert not thread.is_alive()
    assert sorted(seen) == sorted([blocker, *queued])
    idle = d.stub.StreamResults(pb.StreamResultsRequest(all_live=True), timeout=10)
    assert list(idle) == []  # nothing live: the stream ends at once


def test_batch_sends_ended_tasks_many_to_a_message(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "2")
    ids: list[int] = []
    for _ in range(3):
        req = pb.SubmitRequest(env={"A": "1"}, tasks=[pb.TaskSpec(argv=["true"])] * 1000)
        ids += d.stub.Submit(req, timeout=30).ids
    wait(d.stub, *ids[:1], timeout=60)
    done = pb.StreamResultsRequest(ids=ids, finished_only=True)
    assert len(list(d.stub.StreamResults(done, timeout=60))) == 3000  # all ended by now
    batched = pb.StreamResultsRequest(ids=ids, finished_only=True, batch=True)
    events = list(d.stub.StreamResults(batched, timeout=60))
    assert [e.WhichOneof("kind") for e in events] == ["finished_many"] * 3
    tasks = [t for e in events for t in e.finished_many.tasks]
    assert sorted(t.id for t in tasks) == sorted(ids)
    assert all(t.state == pb.TASK_STATE_SUCCEEDED and not t.spec.env for t in tasks)

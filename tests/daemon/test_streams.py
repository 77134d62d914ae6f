"""StreamResults: live, late and firehose watchers."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import poll_state, spec, submit, wait


def test_live_watcher_sees_every_event_in_order(daemon: Daemon) -> None:
    [task_id] = submit(
        daemon.stub, spec("for i in 1 2 3; do echo $i; sleep 0.1; done; echo e >&2", shell=True)
    )
    events = list(daemon.stub.StreamResults(
        pb.StreamResultsRequest(ids=[task_id], output=True), timeout=20))  # fmt: skip
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert events[-1].WhichOneof("kind") == "finished"
    final = events[-1].finished.task
    assert final.state == pb.TASK_STATE_SUCCEEDED and final.stdout == b"1\n2\n3\n"
    stdout = pb.OUTPUT_STREAM_STDOUT
    out = b"".join(e.output.data for e in events if e.output.stream == stdout)
    assert out == b"1\n2\n3\n"


def test_late_watcher_of_running_task_gets_past_then_live(daemon: Daemon, tmp_path: Path) -> None:
    go = tmp_path / "go"
    [task_id] = submit(
        daemon.stub,
        spec(f"echo before; while [ ! -e {go} ]; do sleep 0.05; done; echo after", shell=True),
    )
    poll_state(daemon.stub, task_id, {pb.TASK_STATE_RUNNING})
    deadline_out = b""
    for _ in range(100):
        deadline_out = daemon.stub.Get(pb.GetRequest(id=task_id, output=True)).stdout
        if deadline_out:
            break
        threading.Event().wait(0.05)
    assert deadline_out == b"before\n"
    stream = daemon.stub.StreamResults(pb.StreamResultsRequest(ids=[task_id], output=True),
                                       timeout=20)  # fmt: skip
    first = [next(stream) for _ in range(3)]
    assert [e.WhichOneof("kind") for e in first] == ["queued", "started", "output"]
    assert first[2].output.data == b"before\n"
    go.touch()
    rest = list(stream)
    assert b"".join(e.output.data for e in rest if e.HasField("output")) == b"after\n"
    assert rest[-1].finished.task.state == pb.TASK_STATE_SUCCEEDED


def test_watcher_of_finished_task_gets_only_final_event(daemon: Daemon) -> None:
    [task_id] = submit(daemon.stub, spec("echo", "done"))
    wait(daemon.stub, task_id)
    events = list(daemon.stub.StreamResults(
        pb.StreamResultsRequest(ids=[task_id], output=True), timeout=10))  # fmt: skip
    assert len(events) == 1
    assert events[0].finished.task.stdout == b"done\n"


def test_several_ids_and_unknown_id(daemon: Daemon) -> None:
    ids = submit(daemon.stub, spec("true"), spec("sleep", "0.2"))
    assert set(wait(daemon.stub, *ids)) == set(ids)
    with pytest.raises(grpc.RpcError) as err:
        list(daemon.stub.StreamResults(pb.StreamResultsRequest(ids=[ids[0], 424242]), timeout=5))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_firehose_sees_new_tasks(daemon: Daemon) -> None:
    stream = daemon.stub.StreamResults(pb.StreamResultsRequest(), timeout=20)
    seen: list[pb.TaskEvent] = []
    ready = threading.Event()

    def read() -> None:
        for event in stream:
            seen.append(event)
            if event.WhichOneof("kind") == "finished":
                return

    reader = threading.Thread(target=read)
    reader.start()
    ready.wait(0.3)  # let the stream subscribe
    [task_id] = submit(daemon.stub, spec("true"))
    reader.join(20)
    stream.cancel()
    assert [e.WhichOneof("kind") for e in seen] == ["queued", "started", "finished"]
    assert all(e.task_id == task_id for e in seen)


def test_finished_only(daemon: Daemon) -> None:
    ids = submit(daemon.stub, spec("echo", "a"), spec("sh", "-c", "echo b; sleep 0.2"))
    request = pb.StreamResultsRequest(ids=ids, output=True, finished_only=True)
    events = list(daemon.stub.StreamResults(request, timeout=20))
    assert [e.WhichOneof("kind") for e in events] == ["finished", "finished"]
    assert {e.task_id: e.finished.task.stdout for e in events} == {ids[0]: b"a\n", ids[1]: b"b\n"}


def test_large_output_streams_whole_while_the_journal_keeps_the_cap(
    daemon: Daemon, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    script = f"until [ -e {gate} ]; do sleep 0.02; done; head -c 3000000 /dev/urandom | od -An -v"
    [task_id] = submit(daemon.stub, spec(script, shell=True))
    request = pb.StreamResultsRequest(ids=[task_id], output=True)
    chunks = []
    for event in daemon.stub.StreamResults(request, timeout=60):
        kind = event.WhichOneof("kind")
        if kind == "started":
            gate.touch()  # the watcher is subscribed before the first byte
        elif kind == "output":
            chunks.append(event.output.data)
    task = daemon.stub.Get(pb.GetRequest(id=task_id, output=True))
    assert task.state == pb.TASK_STATE_SUCCEEDED
    streamed = b"".join(chunks)
    assert len(streamed) > 3 << 20, "every byte reached the watcher"
    assert streamed.startswith(task.stdout)
    assert len(task.stdout) == 1 << 20 and task.stdout_truncated


def test_batch_watcher_gets_ends_that_wait_together_as_one_message(
    make_daemon: type[Daemon], tmp_path: Path
) -> None:
    """Live ends queued for a ``batch`` watcher leave as one ``finished_many`` of light records."""
    d = make_daemon("--workers", "1")
    [done] = submit(d.stub, spec("true"))
    wait(d.stub, done)
    [blocker] = submit(d.stub, spec("sleep", "30"))
    queued = submit(d.stub, *[spec("true", env={"SECRET": "x"}) for _ in range(50)])
    request = pb.StreamResultsRequest(ids=[done, *queued], finished_only=True, batch=True)
    events = d.stub.StreamResults(request, timeout=30)
    first = next(events)  # the task that had ended: the watcher is subscribed now
    assert [t.id for t in first.finished_many.tasks] == [done]
    cancelled = d.stub.Cancel(pb.CancelRequest(ids=queued))  # all end in one step
    assert all(r.cancelled for r in cancelled.results)
    rest = list(events)
    assert len(rest) == 1 and rest[0].WhichOneof("kind") == "finished_many"
    tasks = rest[0].finished_many.tasks
    assert [t.id for t in tasks] == queued
    assert all(t.state == pb.TASK_STATE_CANCELLED and not t.spec.env for t in tasks)
    d.stub.Cancel(pb.CancelRequest(ids=[blocker]))

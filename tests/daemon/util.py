"""Small helpers for daemon tests that speak raw gRPC."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc

TERMINAL = {
    pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_TIMED_OUT,
    pb.TASK_STATE_CANCELLED, pb.TASK_STATE_LOST,
}  # fmt: skip


def dur(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def spec(*argv: str, shell: bool = False, **fields: object) -> pb.TaskSpec:
    """A TaskSpec; floats for timeout/queue_timeout become Durations."""
    for key in ("timeout", "queue_timeout"):
        if isinstance(fields.get(key), int | float):
            fields[key] = dur(float(fields[key]))  # type: ignore[arg-type]
    fields.setdefault("env", {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    return pb.TaskSpec(argv=list(argv), shell=shell, **fields)  # type: ignore[arg-type]


def submit(stub: pb_grpc.TaskerStub, *specs: pb.TaskSpec) -> list[int]:
    return list(stub.Submit(pb.SubmitRequest(tasks=specs), timeout=10).ids)


def wait(stub: pb_grpc.TaskerStub, *ids: int, timeout: float = 30) -> dict[int, pb.Task]:
    """Wait until all ids are terminal (via StreamResults); returns their records."""
    done: dict[int, pb.Task] = {}
    for event in stub.StreamResults(pb.StreamResultsRequest(ids=ids), timeout=timeout):
        if event.WhichOneof("kind") == "finished":
            done[event.task_id] = event.finished.task
    assert set(done) == set(ids), f"stream ended with {sorted(done)} of {sorted(ids)}"
    return done


def poll_state(
    stub: pb_grpc.TaskerStub, task_id: int, states: set[int], timeout: float = 15
) -> pb.Task:
    """Poll Get until the task is in one of ``states`` (RUNNING: with its process started)."""
    deadline = time.monotonic() + timeout
    while True:
        task = stub.Get(pb.GetRequest(id=task_id), timeout=5)
        if task.state in states and (task.state != pb.TASK_STATE_RUNNING or task.pid):
            return task
        assert time.monotonic() < deadline, f"task {task_id} stuck in {task.state}"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if alive(p)]}"
        time.sleep(0.05)


def code(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status and message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


def until(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)

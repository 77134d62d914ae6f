"""Models and request building, without a daemon."""

from __future__ import annotations

import os

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerctl._core import build_spec, submit_requests
from taskerctl.errors import (
    InvalidTask,
    QueueFull,
    TaskCancelled,
    TaskFailed,
    TaskTimedOut,
    ended_error,
    parse_field,
)
from taskerctl.models import Priority, TaskResult, TaskState


def test_states_come_from_the_proto() -> None:
    assert [s.name for s in TaskState] == [
        n.removeprefix("TASK_STATE_") for n, _ in pb.TaskState.items()
    ]
    assert TaskState.SUCCEEDED == pb.TASK_STATE_SUCCEEDED
    assert Priority.CRITICAL == pb.PRIORITY_CRITICAL


def _task(state: int, **kw: object) -> TaskResult:
    return TaskResult.from_proto(pb.Task(id=7, state=state, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "fields", "status", "error"),
    [
        (pb.TASK_STATE_SUCCEEDED, {"exit_code": 0}, 0, None),
        (pb.TASK_STATE_FAILED, {"exit_code": 3}, 3, TaskFailed),
        (pb.TASK_STATE_FAILED, {"signal": 15}, 143, TaskFailed),
        (pb.TASK_STATE_FAILED, {"error": "spawn failed: No such file"}, 127, TaskFailed),
        (pb.TASK_STATE_TIMED_OUT, {"signal": 15}, 124, TaskTimedOut),
        (pb.TASK_STATE_CANCELLED, {"signal": 15}, 125, TaskCancelled),
        (pb.TASK_STATE_LOST, {}, 123, TaskFailed),
    ],
)
def test_exit_status_and_error(
    state: int, fields: dict[str, object], status: int, error: type[Exception] | None
) -> None:
    r = _task(state, **fields)
    assert r.exit_status == status
    assert r.ok is (error is None)
    if error is not None:
        err = ended_error(r)
        assert type(err) is error
        assert err.exit_code == status
        assert err.result is r


def test_build_spec_strings_env_cwd_durations() -> None:
    spec = build_spec("echo 'a b' c", timeout="1m30s", queue_timeout=0.5, priority="HIGH")
    assert list(spec.argv) == ["echo", "a b", "c"] and not spec.shell
    assert spec.timeout.seconds == 90 and spec.queue_timeout.nanos == 500_000_000
    assert spec.priority == pb.PRIORITY_HIGH
    assert dict(spec.env) == dict(os.environ) and spec.cwd == os.getcwd()
    assert not spec.HasField("max_retries") and spec.retries == 0
    shell = build_spec("echo $HOME | wc", shell=True, env={}, max_requeues=0, stdin="x")
    assert list(shell.argv) == ["echo $HOME | wc"] and shell.shell and dict(shell.env) == {}
    assert shell.HasField("max_retries") and shell.max_retries == 0 and shell.stdin == b"x"
    with pytest.raises(ValueError, match="invalid priority"):
        build_spec(["true"], priority="urgent")
    with pytest.raises(ValueError, match="invalid duration"):
        build_spec(["true"], timeout="5 parsecs")


def test_retries_is_the_new_field_and_max_requeues_the_old() -> None:
    """Issue 9: ``retries=N`` runs a failed attempt again (``TaskSpec.retries``); the re-queues
    after a lost attempt (``TaskSpec.max_retries``) are ``max_requeues=N``."""
    spec = build_spec(["true"], retries=2)
    assert spec.retries == 2 and not spec.HasField("max_retries")
    spec = build_spec(["true"], max_requeues=5)
    assert spec.retries == 0 and spec.max_retries == 5
    both = build_spec(["true"], retries=1, max_requeues=0)
    assert (both.retries, both.HasField("max_retries"), both.max_retries) == (1, True, 0)


def test_submit_requests_batch_items_and_carry_env_once() -> None:
    items = ["echo a", ["echo", "b"], {"cmd": "echo c", "priority": "low"},
             {"cmd": "env", "env": {"ONLY": "me"}}, pb.TaskSpec(argv=["x"])]  # fmt: skip
    requests = list(submit_requests(items, {"labels": {"k": "v"}, "env": {"A": "1"}}, 3))
    assert [len(r.tasks) for r in requests] == [3, 2]
    specs = [s for r in requests for s in r.tasks]
    assert [list(s.argv) for s in specs] == [["echo", "a"], ["echo", "b"], ["echo", "c"], ["env"],
                                             ["x"]]  # fmt: skip
    assert specs[2].priority == pb.PRIORITY_LOW and specs[0].labels["k"] == "v"
    assert all(r.env == {"A": "1"} for r in requests), "the shared env, once per request"
    assert [dict(s.env) for s in specs] == [{}, {}, {}, {"ONLY": "me"}, {}]


def test_invalid_argument_field_parsing() -> None:
    assert parse_field("tasks[0].timeout: must be > 0") == "tasks[0].timeout"
    assert parse_field("no field here") == ""
    assert InvalidTask("x", field="cwd").exit_code == 2
    assert QueueFull("queue full (2/2)").exit_code == 75


def test_states_and_priorities_print_as_names() -> None:
    assert str(TaskState.SUCCEEDED) == "SUCCEEDED" and f"{Priority.HIGH}" == "HIGH"
    assert TaskState.SUCCEEDED == pb.TASK_STATE_SUCCEEDED

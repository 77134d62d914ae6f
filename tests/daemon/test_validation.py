"""Bad input gets INVALID_ARGUMENT naming the field, and the daemon keeps running."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import dur, spec, submit, wait

BAD: list[tuple[str, pb.TaskSpec, str]] = [
    ("empty argv", pb.TaskSpec(), "tasks[0].argv"),
    ("empty argv[0]", pb.TaskSpec(argv=[""]), "tasks[0].argv"),
    ("NUL in argv", pb.TaskSpec(argv=["echo", "a\0b"]), "tasks[0].argv"),
    ("NUL in env", pb.TaskSpec(argv=["true"], env={"A": "x\0"}), "tasks[0].env"),
    ("= in env name", pb.TaskSpec(argv=["true"], env={"A=B": "x"}), "tasks[0].env"),
    ("relative cwd", pb.TaskSpec(argv=["true"], cwd="rel"), "tasks[0].cwd"),
    ("missing cwd", pb.TaskSpec(argv=["true"], cwd="/no/such/dir"), "tasks[0].cwd"),
    ("zero timeout", pb.TaskSpec(argv=["true"], timeout=dur(0)), "tasks[0].timeout"),
    ("negative timeout", pb.TaskSpec(argv=["true"], timeout=dur(-1)), "tasks[0].timeout"),
    ("huge timeout", pb.TaskSpec(argv=["true"], timeout=dur(31 * 86400)), "tasks[0].timeout"),
    ("bad queue timeout", pb.TaskSpec(argv=["true"], queue_timeout=dur(0)),
     "tasks[0].queue_timeout"),
    ("unknown priority", pb.TaskSpec(argv=["true"], priority=99), "tasks[0].priority"),  # type: ignore[arg-type]
    ("too many retries", pb.TaskSpec(argv=["true"], max_retries=1000), "tasks[0].max_retries"),
    ("huge stdin", pb.TaskSpec(argv=["cat"], stdin=b"x" * (2 << 20)), "tasks[0].stdin"),
    ("huge argv", pb.TaskSpec(argv=["echo"] + ["x" * 1000] * 2000), "tasks[0].argv"),
    ("too many env", pb.TaskSpec(argv=["true"], env={f"V{i}": "" for i in range(5000)}),
     "tasks[0].env"),
    ("long label key", pb.TaskSpec(argv=["true"], labels={"k" * 64: "v"}), "tasks[0].labels"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "bad", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_spec(daemon: Daemon, name: str, bad: pb.TaskSpec, field: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        daemon.stub.Submit(pb.SubmitRequest(tasks=[bad]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":"), err.value.details()


def test_batch_names_the_bad_task_and_accepts_nothing(daemon: Daemon) -> None:
    before = daemon.stub.List(pb.ListRequest()).tasks
    with pytest.raises(grpc.RpcError) as err:
        daemon.stub.Submit(pb.SubmitRequest(tasks=[spec("true"), pb.TaskSpec()]), timeout=10)
    assert err.value.details().startswith("tasks[1].argv")
    assert daemon.stub.List(pb.ListRequest()).tasks == before


def test_other_bad_requests(daemon: Daemon) -> None:
    cases = [
        (lambda: daemon.stub.Submit(pb.SubmitRequest()), grpc.StatusCode.INVALID_ARGUMENT, "tasks"),
        (lambda: daemon.stub.Get(pb.GetRequest(id=0)), grpc.StatusCode.INVALID_ARGUMENT, "id"),
        (lambda: daemon.stub.Get(pb.GetRequest(id=777)), grpc.StatusCode.NOT_FOUND, "task 777"),
        (lambda: daemon.stub.List(pb.ListRequest(page_size=5000)),
         grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        (lambda: daemon.stub.List(pb.ListRequest(page_token="garbage")),
         grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
        (lambda: daemon.stub.List(pb.ListRequest(states=[42])),  # type: ignore[list-item]
         grpc.StatusCode.INVALID_ARGUMENT, "states"),
        (lambda: daemon.stub.Shutdown(pb.ShutdownRequest(mode=9)),  # type: ignore[arg-type]
         grpc.StatusCode.INVALID_ARGUMENT, "mode"),
    ]  # fmt: skip
    for call, code, prefix in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code
        assert err.value.details().startswith(prefix), err.value.details()
    [task_id] = submit(daemon.stub, spec("true"))
    assert wait(daemon.stub, task_id)[task_id].state == pb.TASK_STATE_SUCCEEDED


def test_garbage_bytes_do_not_crash_the_daemon(daemon: Daemon) -> None:
    channel = grpc.insecure_channel(daemon.target)
    raw = channel.unary_unary("/tasker.v1.Tasker/Submit")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff garbage", timeout=5)
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.UNKNOWN)  # fmt: skip
    channel.close()
    assert daemon.stub.Stats(pb.StatsRequest()).base_workers == 2


_text = st.text(st.characters(codec="utf-8"), max_size=20)


@st.composite
def _specs(draw: st.DrawFn) -> pb.TaskSpec:
    task = pb.TaskSpec(argv=["true", *draw(st.lists(_text, max_size=4))])
    task.env.update(draw(st.dictionaries(_text, _text, max_size=4)))
    task.labels.update(draw(st.dictionaries(_text, _text, max_size=3)))
    task.cwd = draw(st.sampled_from(["", "/", "/tmp", "relative", "/no/such", "/tmp\0x"]))
    task.priority = draw(st.integers(-2, 6))  # type: ignore[assignment]
    if draw(st.booleans()):
        task.timeout.FromNanoseconds(draw(st.integers(-(10**9), 40 * 86400 * 10**9)))
    if draw(st.booleans()):
        task.max_retries = draw(st.integers(0, 200))
    return task


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(task=_specs())
def test_random_specs_are_accepted_or_named(daemon: Daemon, task: pb.TaskSpec) -> None:
    try:
        daemon.stub.Submit(pb.SubmitRequest(tasks=[task]), timeout=10)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert err.details().startswith("tasks[0]."), err.details()
    assert daemon.stub.Stats(pb.StatsRequest(), timeout=5).base_workers == 2

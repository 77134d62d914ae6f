"""Every input gets a documented status (never INTERNAL or UNKNOWN), and every status reaches
the client: bad bytes, ids past the journal's range, page tokens, label filters, durations, and
messages that would quote huge values."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerd.errors import InvalidArgument
from taskerd.peers import Peers
from taskerd.service import Context, Service, add_to_server, unary
from tests.conftest import Daemon
from tests.daemon.util import spec, submit, wait

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNDECODABLE = "request: cannot be decoded"
#: grpcio's client drops a status whose metadata passes 16 KiB; ours stay far below.
SHORT = 1024


def _error(call: Callable[[], object]) -> grpc.RpcError:
    """The error a call ends with; a stream is read to its end."""
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return err.value


def _invalid(call: Callable[[], object], field: str) -> str:
    """Assert INVALID_ARGUMENT naming ``field``, in a short message; returns the message."""
    err = _error(call)
    details = err.details() or ""
    assert err.code() == INVALID, (err.code(), details[:200])
    assert details.startswith(f"{field}:"), details[:200]
    assert len(details) < SHORT, len(details)
    return details


@pytest.fixture(scope="module")
def raw(shared: Daemon) -> Iterator[grpc.Channel]:
    """A channel for raw request bytes (no serializer), to any of the service's methods."""
    channel = grpc.insecure_channel(shared.target)
    yield channel
    channel.close()


# ----------------------------------------------------------------- ids


@pytest.mark.parametrize("task_id", [2**63 - 1, 2**63, 2**64 - 1])
def test_ids_past_the_journal_range_are_not_found(shared: Daemon, task_id: int) -> None:
    stub = shared.stub
    calls = {
        "Get": lambda: stub.Get(pb.GetRequest(id=task_id), timeout=5),
        "Cancel": lambda: stub.Cancel(pb.CancelRequest(id=task_id), timeout=5),
        "StreamResults": lambda: stub.StreamResults(
            pb.StreamResultsRequest(ids=[task_id]), timeout=5
        ),
    }
    for name, call in calls.items():
        err = _error(call)
        assert (err.code(), err.details()) == (NOT_FOUND, f"task {task_id} not found"), name


def test_a_known_id_beside_a_huge_one_is_not_found_and_zero_stays_invalid(shared: Daemon) -> None:
    stub = shared.stub
    [known] = submit(stub, spec("true"))
    wait(stub, known)
    err = _error(lambda: stub.StreamResults(pb.StreamResultsRequest(ids=[known, 2**64 - 1])))
    assert err.code() == NOT_FOUND, err.details()
    _invalid(lambda: stub.StreamResults(pb.StreamResultsRequest(ids=[2**64 - 1, 0])), "ids")
    _invalid(lambda: stub.Get(pb.GetRequest(id=0)), "id")
    err = _error(lambda: stub.Cancel(pb.CancelRequest(id=0)))
    assert err.code() == INVALID and (err.details() or "").startswith("id"), err.details()


# ----------------------------------------------------------------- List


@pytest.mark.parametrize(
    "token",
    ["9" * 30, "9223372036854775808", "1" * 5000, "\u0663", "\uff13", "0", "-1", " 3", "3\n"],
    ids=["30 nines", "2^63", "5000 digits", "arabic-indic 3", "fullwidth 3", "0", "-1",
         "space", "newline"],
)  # fmt: skip
def test_bad_page_tokens_are_invalid(shared: Daemon, token: str) -> None:
    _invalid(lambda: shared.stub.List(pb.ListRequest(page_token=token), timeout=5), "page_token")


def test_the_largest_page_token_pages_from_the_newest(shared: Daemon) -> None:
    stub = shared.stub
    ids = submit(stub, spec("true"), spec("true"))
    newest = stub.List(pb.ListRequest(page_size=1, page_token=str(2**63 - 1)), timeout=5)
    assert [t.id for t in newest.tasks] == [ids[-1]]
    after = stub.List(pb.ListRequest(page_size=1, page_token=newest.next_page_token), timeout=5)
    assert [t.id for t in after.tasks] == [ids[0]]


def test_label_filters_are_bounded_like_labels(shared: Daemon) -> None:
    stub = shared.stub
    [task_id] = submit(stub, spec("true", labels={f"k{i}": "v" for i in range(64)}))
    filters = {f"k{i}": "v" for i in range(64)}
    assert [t.id for t in stub.List(pb.ListRequest(labels=filters), timeout=10).tasks] == [task_id]
    for many in (65, 5000):
        over = {f"k{i}": "v" for i in range(many)}
        _invalid(lambda over=over: stub.List(pb.ListRequest(labels=over), timeout=10), "labels")
    _invalid(lambda: stub.List(pb.ListRequest(labels={"k" * 20_000: "v"}), timeout=10), "labels")
    _invalid(lambda: stub.List(pb.ListRequest(labels={"": "v"}), timeout=10), "labels")
    _invalid(lambda: stub.List(pb.ListRequest(labels={"k": "\0"}), timeout=10), "labels")


# ----------------------------------------------------------------- undecodable requests


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, as the wire format writes it."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


GARBAGE = b"\xff\xff\xff\xff garbage"
_METHODS = list(pb.DESCRIPTOR.services_by_name["Tasker"].methods)


@pytest.mark.parametrize("method", _METHODS, ids=[m.name for m in _METHODS])
def test_garbage_bytes_are_invalid_on_every_method(
    shared: Daemon, raw: grpc.Channel, method: MethodDescriptor
) -> None:
    with pytest.raises(DecodeError):  # the premise: these bytes are no request at all
        getattr(pb, method.input_type.name).FromString(GARBAGE)
    path = f"/tasker.v1.Tasker/{method.name}"
    multi = raw.unary_stream if method.server_streaming else raw.unary_unary
    err = _error(lambda: multi(path)(GARBAGE, timeout=5))
    assert (err.code(), err.details()) == (INVALID, UNDECODABLE)
    assert shared.stub.Stats(pb.StatsRequest(), timeout=5).base_workers == 4


BROKEN: list[tuple[str, str, bytes]] = [
    ("Submit", "tasks[0].argv", _field(1, _field(1, b"\xff"))),
    ("Submit", "tasks[0].env name", _field(1, _field(3, _field(1, b"\xc3") + _field(2, b"v")))),
    ("Submit", "env value", _field(1, _field(1, b"true")) + _field(2, _field(1, b"A")
                                                                  + _field(2, b"\xed\xa0\x80"))),
    ("Run", "task.cwd", _field(1, _field(4, b"/\xfe"))),
    ("List", "page_token", _field(4, b"\xe0\x80")),
    ("List", "labels key", _field(2, _field(1, b"\xff") + _field(2, b"v"))),
    ("Submit", "truncated", pb.SubmitRequest(tasks=[spec("true")]).SerializeToString()[:-1]),
    ("StreamResults", "ids packed, cut", _field(1, b"\xff")),
    ("Stats", "200 nested groups", b"\x7b" * 200 + b"\x7c" * 200),
]  # fmt: skip


@pytest.mark.parametrize(("method", "what", "data"), BROKEN, ids=[b[1] for b in BROKEN])
def test_bad_strings_and_broken_wire_format_are_invalid(
    shared: Daemon, raw: grpc.Channel, method: str, what: str, data: bytes
) -> None:
    path = f"/tasker.v1.Tasker/{method}"
    multi = raw.unary_stream if method in ("Run", "StreamResults") else raw.unary_unary
    err = _error(lambda: multi(path)(data, timeout=5))
    assert (err.code(), err.details()) == (INVALID, UNDECODABLE)


#: Read-only methods (a fuzzed Cancel at most cancels a task of this module, all short).
_FUZZED = ["Get", "Cancel", "List", "StreamResults", "Stats", "Metrics"]
_DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(_FUZZED), data=st.binary(max_size=48))
def test_random_bytes_get_a_documented_status(
    shared: Daemon, raw: grpc.Channel, method: str, data: bytes
) -> None:
    path = f"/tasker.v1.Tasker/{method}"
    expected = set(_DOCUMENTED)
    try:
        if method == "StreamResults":  # the firehose (no ids) runs until the deadline
            expected.add(grpc.StatusCode.DEADLINE_EXCEEDED)
            list(raw.unary_stream(path)(data, timeout=0.3))
        else:
            raw.unary_unary(path)(data, timeout=5)
    except grpc.RpcError as err:
        assert err.code() in expected, (err.code(), err.details())


def test_good_raw_bytes_are_answered(shared: Daemon, raw: grpc.Channel) -> None:
    stats = raw.unary_unary("/tasker.v1.Tasker/Stats")(b"", timeout=5)
    assert pb.StatsResponse.FromString(stats).base_workers == 4
    request = pb.RunRequest(task=spec("true")).SerializeToString()
    events = list(raw.unary_stream("/tasker.v1.Tasker/Run")(request, timeout=10))
    last = pb.TaskEvent.FromString(events[-1])
    assert last.finished.task.state == pb.TASK_STATE_SUCCEEDED


# ----------------------------------------------------------------- huge values in messages


def test_messages_quote_huge_values_cut_short(shared: Daemon) -> None:
    stub = shared.stub

    def one(task: pb.TaskSpec, **request: object) -> Callable[[], object]:
        return lambda: stub.Submit(pb.SubmitRequest(tasks=[task], **request), timeout=10)  # type: ignore[arg-type]

    key = _invalid(one(pb.TaskSpec(argv=["true"], labels={"k" * 20_000: "v"})), "tasks[0].labels")
    assert "kkk" in key and "20000" in key, key
    cwd = _invalid(one(pb.TaskSpec(argv=["true"], cwd="x" * (1 << 20))), "tasks[0].cwd")
    assert str(1 << 20) in cwd, cwd
    _invalid(one(pb.TaskSpec(argv=["true"], cwd="/" + "x" * (1 << 20))), "tasks[0].cwd")
    name = "A=" + "x" * 100_000
    _invalid(one(pb.TaskSpec(argv=["true"], env={name: "v"})), "tasks[0].env")
    _invalid(one(pb.TaskSpec(argv=["true"]), env={name: "v"}), "env")
    _invalid(
        lambda: stub.Run(pb.RunRequest(task=pb.TaskSpec(argv=["true"], cwd="y" * (1 << 20)))),
        "task.cwd",
    )


class _Loud(Service):
    """A Service whose answers carry 100 KB messages: what ``_abort`` must cut."""

    @unary
    async def Stats(self, request: pb.StatsRequest, context: Context) -> pb.StatsResponse:
        raise InvalidArgument("field", "\u00e9" * 100_000)

    @unary
    async def Metrics(self, request: pb.MetricsRequest, context: Context) -> pb.MetricsResponse:
        raise RuntimeError("\U0001f4a5" * 100_000)


async def test_every_status_message_is_capped(tmp_path: Path) -> None:
    server = grpc.aio.server()
    add_to_server(_Loud(None, None, lambda mode: None, Peers()), server)  # type: ignore[arg-type]
    target = f"unix:{tmp_path}/loud.sock"
    server.add_insecure_port(target)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.TaskerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Stats(pb.StatsRequest(), timeout=5)
            assert err.value.code() == INVALID, err.value.details()[:200]
            assert err.value.details().startswith("field: \u00e9\u00e9")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Metrics(pb.MetricsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.INTERNAL, err.value.details()[:200]
    finally:
        await server.stop(None)


# ----------------------------------------------------------------- durations, enums, sizes


def _d(seconds: int, nanos: int) -> Duration:
    return Duration(seconds=seconds, nanos=nanos)


MALFORMED = [(0, 1_000_000_000), (1, -1), (-1, 1), (0, -1_000_000_000), (315_576_000_001, 0),
             (0, 2**31 - 1), (-(2**63), -(2**31))]  # fmt: skip


@pytest.mark.parametrize(("seconds", "nanos"), MALFORMED)
def test_malformed_durations_are_invalid(shared: Daemon, seconds: int, nanos: int) -> None:
    stub = shared.stub
    for field in ("timeout", "queue_timeout"):
        task = pb.TaskSpec(argv=["true"], **{field: _d(seconds, nanos)})  # type: ignore[arg-type]
        _invalid(lambda t=task: stub.Submit(pb.SubmitRequest(tasks=[t]), timeout=5),
                 f"tasks[0].{field}")  # fmt: skip
        _invalid(lambda t=task: stub.Run(pb.RunRequest(task=t), timeout=5), f"task.{field}")
    before = stub.List(pb.ListRequest(page_size=1000), timeout=5).tasks
    clean = pb.CleanRequest(older_than=_d(seconds, nanos))
    _invalid(lambda: stub.Clean(clean, timeout=5), "older_than")
    assert stub.List(pb.ListRequest(page_size=1000), timeout=5).tasks == before


def test_durations_at_the_bounds(shared: Daemon) -> None:
    stub = shared.stub
    tiny = spec("true", queue_timeout=_d(30 * 86400, 0), timeout=_d(0, 1))
    [task_id] = submit(stub, tiny)
    assert wait(stub, task_id)[task_id].state in (pb.TASK_STATE_TIMED_OUT, pb.TASK_STATE_SUCCEEDED)
    _invalid(lambda: submit(stub, spec("true", timeout=_d(30 * 86400, 1))), "tasks[0].timeout")
    _invalid(lambda: stub.Clean(pb.CleanRequest(older_than=_d(-1, 0))), "older_than")
    far = pb.CleanRequest(older_than=_d(315_576_000_000, 0))
    assert stub.Clean(far, timeout=5).removed == 0


def test_unknown_enums_and_limits(shared: Daemon) -> None:
    stub = shared.stub
    for value in (-1, 12, 2**31 - 1):  # unknown to Priority, TaskState and ShutdownMode
        task = pb.TaskSpec(argv=["true"], priority=value)  # type: ignore[arg-type]
        _invalid(lambda t=task: submit(stub, t), "tasks[0].priority")
        _invalid(lambda v=value: stub.List(pb.ListRequest(states=[v])), "states")
        _invalid(lambda v=value: stub.Shutdown(pb.ShutdownRequest(mode=v)), "mode")  # type: ignore[arg-type]
    _invalid(lambda: stub.List(pb.ListRequest(states=[pb.TASK_STATE_UNSPECIFIED])), "states")
    _invalid(lambda: stub.List(pb.ListRequest(page_size=2**32 - 1)), "page_size")
    _invalid(lambda: submit(stub, pb.TaskSpec(argv=["true"], max_retries=2**32 - 1)),
             "tasks[0].max_retries")  # fmt: skip
    _invalid(lambda: submit(stub, *[spec("true")] * 10_001), "tasks")
    _invalid(lambda: stub.StreamResults(pb.StreamResultsRequest(ids=[1] * 10_001)), "ids")
    _invalid(lambda: submit(stub, spec("true", "\0")), "tasks[0].argv")
    _invalid(lambda: submit(stub, spec("")), "tasks[0].argv")
    _invalid(lambda: stub.Run(pb.RunRequest()), "task.argv")
    assert stub.Stats(pb.StatsRequest(), timeout=5).shutting_down is False


def test_an_empty_argv_item_is_an_argument(shared: Daemon) -> None:
    [task_id] = submit(shared.stub, spec("sh", "-c", 'test -z "$1"', "sh", ""))
    assert wait(shared.stub, task_id)[task_id].state == pb.TASK_STATE_SUCCEEDED


def test_the_request_env_counts_toward_each_task_s_argv_and_env(shared: Daemon) -> None:
    half = {f"V{i}": "x" * 1000 for i in range(600)}  # ~600 KB
    argv = ["true", *["y" * 1000] * 600]  # ~600 KB
    one = pb.SubmitRequest(tasks=[pb.TaskSpec(argv=argv)], env=half)
    _invalid(lambda: shared.stub.Submit(one, timeout=10), "tasks[0].argv")
    own = pb.SubmitRequest(tasks=[pb.TaskSpec(argv=argv, env={"PATH": os.defpath})], env=half)
    assert len(shared.stub.Submit(own, timeout=10).ids) == 1


def test_a_path_longer_than_path_max_is_no_cwd(shared: Daemon) -> None:
    long = "/" + "d/" * 3000
    details = _invalid(lambda: submit(shared.stub, spec("true", cwd=long)), "tasks[0].cwd")
    assert "PATH_MAX" in details, details

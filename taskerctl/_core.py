"""The core of the twin clients, as httpx's ``BaseClient`` is of its ``Client`` and ``AsyncClient``:
everything that does not wait on the network is written here, once.

* Requests: ``submit`` keywords become a ``TaskSpec`` in :func:`build_spec` (a value that cannot
  make a request raises :class:`~taskerctl.errors.InvalidTask` naming its field), and every other
  request is built here too, checked the same way (``ids``, ``group``, ``delay``, ``signal``...).
* Answers: protos become :class:`~taskerctl.models.TaskResult` and its kin, and gRPC errors typed
  errors (:meth:`BaseClient._errors`).
* An operation of one or more unary calls (Get, the pages of List, the batches of Submit) is a
  generator: it yields each :class:`Call` it needs and is sent the answer back; it returns the
  result. A transport steps it with a :class:`Driver`. A wait for tasks to finish is a
  :class:`Waiter`: its StreamResults requests, and the results their events carry.

:mod:`taskerctl._sync` and :mod:`taskerctl._async` keep only the transport: they send what is built
here, blocking or awaited, and hand the answers back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import socket as sockets
import threading
import time
import warnings
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeAlias, TypedDict, TypeVar, cast

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from tasker.api import METADATA
from tasker.paths import client_socket_path
from tasker.peers import KEY as PEER_KEY
from tasker.peers import peer_path
from tasker.v1 import tasker_pb2 as pb
from taskerctl.errors import (
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidTask,
    TaskerError,
    ended_error,
    from_rpc_error,
)
from taskerctl.models import (
    Command,
    Group,
    Metrics,
    OutputCallback,
    ResultCallback,
    Schedule,
    SpecLike,
    Stats,
    TaskEvent,
    TaskResult,
    parse_priority,
    parse_state,
    parse_time,
    to_seconds,
)

T = TypeVar("T")
C = TypeVar("C")

#: The default of every ``rpc_timeout=``: the client's own ``rpc_timeout``.
UNSET: Any = object()
#: The default deadline of unary RPCs, in seconds; it never limits a wait, a stream or a task.
DEFAULT_RPC_TIMEOUT = 30.0
#: Most ids one StreamResults request may name (the daemon's limit).
MAX_IDS = 10_000
#: gRPC channel options of both clients: 64 MiB messages both ways.
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
)
_BAD_VALUE = (ValueError, TypeError, OverflowError)


# -- the shared halves of the clients and their handles --------------------------------------


def _read(what: str, path: str | os.PathLike[str] | None) -> bytes | None:
    if path is None or path == "":
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TaskerError(f"{what} {path}: {exc.strerror}") from None


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in a file (its first line, without surrounding blanks)."""
    data = _read("token file", path) or b""
    token = data.decode(errors="replace").strip().splitlines()
    if not token or not token[0].strip():
        raise TaskerError(f"token file {path}: empty")
    return token[0].strip()


#: The verbs whose tasks record who submitted them (see :meth:`BaseClient._call_metadata`).
_SUBMITTING = frozenset({"Submit", "Run"})


def _closed(door: sockets.socket) -> bool:
    """Whether taskerd closed the side door (it stopped, or restarted)."""
    try:
        return door.recv(1, sockets.MSG_PEEK | sockets.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Remote(TypedDict, total=False):
    """How a client reaches a daemon over TCP (see :class:`BaseClient`)."""

    address: str | None  # host:port; default $TASKER_ADDRESS (unless a socket is named)
    token: str | None  # sent as "authorization: Bearer TOKEN"; default $TASKER_TOKEN
    tls_ca: (
        str | os.PathLike[str] | None
    )  # PEM CA bundle; default $TASKER_TLS_CA, else the system's
    tls_cert: str | os.PathLike[str] | None  # PEM client certificate, for mutual TLS
    tls_key: str | os.PathLike[str] | None  # its PEM private key
    insecure: bool  # plaintext TCP (a loopback listener with insecure_loopback)


class BaseClient:
    """What both clients are beside their transport: where the daemon is (its Unix socket, or a
    TCP address with TLS and a token), the default RPC deadline, and the one place gRPC errors
    become typed ones."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None,
        rpc_timeout: float | None,
        *,
        address: str | None = None,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        insecure: bool = False,
    ) -> None:
        env = os.environ
        self.socket: Path = Path(os.path.abspath(client_socket_path(socket)))
        self.rpc_timeout = rpc_timeout
        #: The daemon's TCP address (host:port), or None for its Unix socket.
        self.address = address or (env.get("TASKER_ADDRESS") if socket is None else None) or None
        token = token if token is not None else env.get("TASKER_TOKEN") or None
        self._metadata = METADATA + ((("authorization", f"Bearer {token}"),) if token else ())
        self._credentials: Any = None
        if self.address is None:
            self._target = f"unix:{self.socket}"
        else:
            self._target = self.address
            if not insecure:
                ca = _read("TLS CA", tls_ca if tls_ca is not None else env.get("TASKER_TLS_CA"))
                self._credentials = grpc.ssl_channel_credentials(
                    ca, _read("TLS key", tls_key), _read("TLS certificate", tls_cert)
                )
        self._where: Path | str = self.address or self.socket
        # The Unix socket's side door (tasker.peers): opened on the first call, again after the
        # daemon closed it (a restart); its nonce goes with each call while it is open.
        self._door: sockets.socket | None = None
        self._door_lock = threading.Lock()
        self._nonce = os.urandom(16).hex()

    def _call_metadata(self, method: str) -> tuple[tuple[str, str], ...]:
        """The metadata of a call of ``method``; for the verbs that submit (Submit, Run) over
        the Unix socket, with the side door's nonce when the door is open (so that taskerd
        records this process's user for the tasks it submits). Other calls never knock."""
        if self.address is not None or method not in _SUBMITTING:
            return self._metadata
        door = self._door
        if door is None or _closed(door):
            with self._door_lock:
                door = self._door = self._knock(self._door)
        return self._metadata if door is None else (*self._metadata, (PEER_KEY, self._nonce))

    def _knock(self, old: sockets.socket | None) -> sockets.socket | None:
        """A new connection to the side door with this client's nonce; None if there is none
        (a daemon that is down, or without one)."""
        if old is not None:
            if not _closed(old):
                return old  # another thread opened it again meanwhile
            old.close()
        door = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM | sockets.SOCK_CLOEXEC)
        door.setblocking(False)
        try:
            door.connect(os.fspath(peer_path(self.socket)))
            door.send(self._nonce.encode() + b"\n")
        except OSError:
            door.close()
            return None
        return door

    def _close_door(self) -> None:
        with self._door_lock:
            door, self._door = self._door, None
        if door is not None:
            door.close()

    def _open_channel(self, api: Any) -> Any:
        """A channel to the daemon, of ``api``: the module ``grpc`` or ``grpc.aio``."""
        options = list(CHANNEL_OPTIONS)
        if self._credentials is None:
            return api.insecure_channel(self._target, options=options)
        return api.secure_channel(self._target, self._credentials, options=options)

    def _timeout(self, rpc_timeout: Any) -> float | None:
        return self.rpc_timeout if rpc_timeout is UNSET else cast("float | None", rpc_timeout)

    @contextlib.contextmanager
    def _errors(self, *calls: Any) -> Iterator[None]:
        """Raise a gRPC error (sync or aio) as its :class:`TaskerError`; cancel ``calls``
        (streams) on the way out, whatever the way."""
        try:
            yield
        except grpc.RpcError as err:
            raise from_rpc_error(err, self._where) from None
        finally:
            for call in calls:
                call.cancel()


class BaseHandle(Generic[C]):
    """What both task handles are: a client and a task id. Making one costs no RPC, and no
    property of theirs makes one (but the deprecated ``state``): their methods do."""

    def __init__(self, client: C, task_id: int) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id})"


def deprecated(old: str, new: str) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (pointing at the caller's caller)."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


def succeeded(result: TaskResult) -> TaskResult:
    """``result`` if the task SUCCEEDED; else raise ``TaskFailed``/``TaskTimedOut``/
    ``TaskCancelled``."""
    if not result.ok:
        raise ended_error(result)
    return result


# -- building specs ---------------------------------------------------------------------------


def _count(name: str, value: int | None) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def _set_seconds(target: Duration, value: float | str | None) -> None:
    seconds = to_seconds(value)
    if seconds is not None:
        target.FromNanoseconds(round(seconds * 1e9))


def _set_time(target: Timestamp, value: datetime | float | str | None) -> None:
    """Set a Timestamp from a datetime, epoch seconds or a time string (see ``parse_time``)."""
    if value is not None:
        target.FromDatetime(parse_time(value))


def _set_start(target: Timestamp, start_at: Any, delay: float | str | None) -> None:
    """``TaskSpec.start_at``: at ``start_at``, or ``delay`` from now."""
    if delay is None:
        _set_time(target, start_at)
        return
    if start_at is not None:
        raise ValueError("give start_at or delay, not both")
    try:
        seconds = to_seconds(delay)
    except ValueError as err:
        raise ValueError(f"delay: {err}") from None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    target.FromNanoseconds(round((time.time() + seconds) * 1e9))


def _bad(field: str, err: Exception) -> InvalidTask:
    return InvalidTask(f"{field}: {err}", field=field)


def _set_duration(request: Message, field: str, value: float | str | None) -> None:
    """Set the Duration ``field`` of ``request`` from seconds or a duration string."""
    try:
        _set_seconds(getattr(request, field), value)
    except _BAD_VALUE as err:
        raise _bad(field, err) from None


def _whole(field: str, value: int | None) -> int:
    """A count a request carries (0 for None)."""
    try:
        return _count(field, value)
    except ValueError as err:
        raise _bad(field, err) from None


def _text(value: object) -> str:
    """A group's name as a request carries it: a string (the daemon checks the rest)."""
    if not isinstance(value, str):
        raise TypeError(f"not a name: {value!r}")
    return value


def _name(field: str, value: object) -> str:
    """:func:`_text`, its error naming ``field``."""
    try:
        return _text(value)
    except TypeError as err:
        raise _bad(field, err) from None


def _names(field: str, values: str | Iterable[str] | None) -> list[str]:
    """Names without repeats; one string is one name."""
    if values is None:
        return []
    return [_name(field, v) for v in dict.fromkeys([values] if isinstance(values, str) else values)]


def _group(group: str | None) -> str:
    """The ``group`` filter of a request: "" (every group) for None."""
    return "" if group is None else _name("group", group)


def _priority(priority: str | int) -> pb.Priority.ValueType:
    return cast("pb.Priority.ValueType", parse_priority(priority).value)


def build_spec(
    cmd: Command,
    *,
    priority: str | int = "normal",
    timeout: float | str | None = None,
    queue_timeout: float | str | None = None,
    once: bool = False,
    retries: int = 0,
    max_requeues: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: bytes | str | None = None,
    labels: Mapping[str, str] | None = None,
    shell: bool = False,
    group: str | None = None,
    on_finish: str | None = None,
    after: int | Iterable[int] | None = None,
    after_any: bool = False,
    start_at: datetime | float | str | None = None,
    delay: float | str | None = None,
) -> pb.TaskSpec:
    """Build a ``TaskSpec``: the one place ``submit`` keywords become a request.

    * ``cmd``: an argv list, or a string: run by ``/bin/sh -c`` with ``shell=True``, else
      ``shlex.split``.
    * ``priority``: ``low``, ``normal``, ``high`` or ``critical`` (or a :class:`Priority`).
    * ``timeout``: kill the task after this long; ``queue_timeout``: give up on it if it has not
      started this long after it was submitted. Seconds, or a duration string (``"1m30s"``).
    * ``once``: at most once: never run again, not even after a daemon crash (it ends LOST).
    * ``retries``: run a failed attempt (a non-zero exit, or a signal the daemon did not send)
      again, at once, up to this many times before the task ends FAILED. A timeout, a cancel or
      a command that cannot start is not retried. Not with ``once`` (the daemon refuses it).
    * ``max_requeues``: how many times the task may be re-queued after an attempt was lost to an
      unhealthy worker or to a daemon crash (``TaskSpec.max_retries``); None: the daemon's
      ``max_retries``.
    * ``env=None`` sends a copy of ``os.environ`` and ``cwd=None`` the current directory, as a
      user expects from ``nohup cmd``. ``stdin``: bytes fed to the task. ``labels``: for
      filtering (``list``, ``cancel_many``).
    * ``group``: the group whose queue and slots run it (None: ``default``).
    * ``on_finish``: a shell command run after the task ended (besides the daemon's own).
    * ``after``: ids of tasks that must all SUCCEED before it is queued (WAITING until then; if
      one ends otherwise, it ends CANCELLED); with ``after_any``, it is queued once they have
      ended, however they ended.
    * ``start_at``: not before this time (SCHEDULED until then): a datetime (naive: local
      time), epoch seconds, ``"HH:MM"`` (the next such local time) or ISO 8601; or ``delay``:
      this long from now (seconds or ``"10m"``). Not both.

    A value that cannot make a request raises :class:`InvalidTask` whose ``field`` names the
    ``TaskSpec`` field (``timeout``); the daemon checks the rest, such as bounds.
    """
    field = "argv"
    try:
        spec = pb.TaskSpec()
        if isinstance(cmd, str):
            spec.argv.extend([cmd] if shell else shlex.split(cmd))
        else:
            spec.argv.extend(os.fspath(a) for a in cmd)
        field = "shell"
        spec.shell = shell
        field = "env"
        spec.env.update(os.environ if env is None else env)
        field = "cwd"
        spec.cwd = os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd()
        field = "stdin"
        if stdin:
            spec.stdin = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        field = "priority"
        spec.priority = _priority(priority)
        field = "timeout"
        _set_seconds(spec.timeout, timeout)
        field = "queue_timeout"
        _set_seconds(spec.queue_timeout, queue_timeout)
        field = "once"
        spec.once = once
        field = "retries"
        spec.retries = _count("retries", retries)
        field = "max_retries"
        if max_requeues is not None:
            spec.max_retries = _count("max_requeues", max_requeues)
        field = "labels"
        if labels:
            spec.labels.update(labels)
        field = "group"
        if group is not None:
            spec.group = _text(group)
        field = "on_finish"
        if on_finish is not None:
            if not isinstance(on_finish, str):
                raise TypeError(f"not a command line: {on_finish!r}")
            spec.on_finish = on_finish
        field = "after"
        if after is not None:
            spec.after.extend(_unique_ids([after] if isinstance(after, int) else after))
        spec.after_any = after_any
        field = "start_at"
        _set_start(spec.start_at, start_at, delay)
    except _BAD_VALUE as err:
        raise _bad(field, err) from None
    return spec


def _spec(where: str, cmd: Command, options: Mapping[str, Any]) -> pb.TaskSpec:
    """:func:`build_spec`, its errors naming the task as the daemon would (``tasks[3].timeout``)."""
    try:
        return build_spec(cmd, **options)
    except InvalidTask as err:
        raise InvalidTask(f"{where}.{err.message}", field=f"{where}.{err.field}") from None


def _submit_request(env: Mapping[str, str], stashed: bool) -> pb.SubmitRequest:
    request = pb.SubmitRequest(env=env)
    if stashed:  # the tasks are STASHED until enqueued
        request.stashed = True
    return request


def split_refs(refs: Iterable[int], start: int, ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Earlier tasks of one submission, by their place in it, as a request names them: those
    before ``start`` (the first place of this request) by their ids, from ``ids`` (the ids of
    the places answered so far), for ``TaskSpec.after``; the others by their place in this
    request, for ``TaskSpec.after_tasks``."""
    known: list[int] = []
    local: list[int] = []
    for ref in refs:
        if ref < start:
            known.append(ids[ref])
        else:
            local.append(ref - start)
    return known, local


def _after_items(where: str, refs: object, i: int) -> list[int]:
    """The ``after_items`` of item ``i``: places of earlier items."""
    try:
        places = _unique_ids([refs] if isinstance(refs, int) else cast("Iterable[int]", refs))
        late = [r for r in places if r >= i]
        if late:
            raise ValueError(f"after_items: {late[0]} is not the place of an earlier item")
    except _BAD_VALUE as err:
        raise _bad(f"{where}.after_tasks", err) from None
    return places


def submit_requests(
    items: Iterable[SpecLike],
    options: Mapping[str, Any],
    batch_size: int,
    stashed: bool = False,
    ids: Sequence[int] = (),
) -> Iterator[pb.SubmitRequest]:
    """Lazily turn ``submit_many`` items into Submit requests of at most ``batch_size`` tasks.

    ``options`` are ``submit`` kwargs shared by all items. Their environment (by default a copy of
    ``os.environ``) travels once per request, in ``SubmitRequest.env``, not once per task. A bad
    item is named by its place among all items: ``tasks[1234].timeout``. ``stashed``: the tasks
    are not queued until enqueued.

    A dict item's ``after_items`` names earlier items by their place (from 0) among all items:
    one in the same request becomes ``after_tasks``, one in an earlier request its id in
    ``after``, from ``ids``, which the caller extends with each answer before asking for the next
    request.
    """
    shared = dict(options)
    env = shared.pop("env", None)
    if shared.get("cwd") is None:
        shared["cwd"] = os.getcwd()
    plain = {**shared, "env": {}}
    size = max(1, min(batch_size, MAX_IDS))
    try:
        request = _submit_request(dict(os.environ if env is None else env), stashed)
    except _BAD_VALUE as err:
        raise _bad("env", err) from None
    shared_env = request.env
    start = 0  # the place of the request's first task among all items
    for i, item in enumerate(items):
        if isinstance(item, pb.TaskSpec):
            request.tasks.append(item)
        elif isinstance(item, Mapping):
            merged = {**plain, **item}
            if "cmd" not in merged:
                raise InvalidTask(
                    f"tasks[{i}].argv: no 'cmd' in {item!r}", field=f"tasks[{i}].argv"
                )
            refs = _after_items(f"tasks[{i}]", merged.pop("after_items", ()), i)
            spec = _spec(f"tasks[{i}]", merged.pop("cmd"), merged)
            known, local = split_refs(refs, start, ids)
            spec.after.extend(known)
            spec.after_tasks.extend(local)
            request.tasks.append(spec)
        else:
            request.tasks.append(_spec(f"tasks[{i}]", item, plain))
        if len(request.tasks) >= size:
            yield request
            start = i + 1
            request = _submit_request(shared_env, stashed)
    if request.tasks:
        yield request


def run_request(cmd: Command, options: Mapping[str, Any]) -> pb.RunRequest:
    """The request of ``run`` and ``run_stream``."""
    return pb.RunRequest(task=_spec("task", cmd, options))


def _unique_ids(ids: Iterable[int]) -> list[int]:
    """``ids`` without repeats; ValueError for one a request cannot carry (a negative one)."""
    unique = list(dict.fromkeys(ids))
    for i in unique:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2**64:
            raise ValueError(f"not a task id: {i!r}")
    return unique


def _id_list(ids: Iterable[int], field: str = "ids") -> list[int]:
    """``ids`` without repeats, as a request takes them (a negative id cannot be sent)."""
    try:
        return _unique_ids(ids)
    except _BAD_VALUE as err:
        raise _bad(field, err) from None


def _states(states: Iterable[str | int] | None) -> list[pb.TaskState.ValueType]:
    try:
        return [cast("pb.TaskState.ValueType", parse_state(s).value) for s in states or ()]
    except _BAD_VALUE as err:
        raise _bad("states", err) from None


#: Every task's end from now on, several in one message when the reader is behind.
ENDS = pb.StreamResultsRequest(finished_only=True, batch=True)


def ended_tasks(event: pb.TaskEvent) -> list[TaskResult]:
    """The tasks an event of an :data:`ENDS` stream says ended."""
    kind = event.WhichOneof("kind")
    if kind == "finished_many":
        return [TaskResult.from_proto(t) for t in event.finished_many.tasks]
    if kind == "finished":
        return [TaskResult.from_proto(event.finished.task)]
    return []


def stream_request(
    ids: Iterable[int] | None, output: bool, finished_only: bool
) -> pb.StreamResultsRequest:
    """The request of ``stream_results``: the events of ``ids``, or of every task (None)."""
    return pb.StreamResultsRequest(
        ids=_id_list(ids or ()), output=output, finished_only=finished_only
    )


# -- operations: the unary RPCs, each answer mapped -------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One unary RPC an operation needs: the stub method's name, and the request."""

    method: str
    request: Message


#: An operation: yields the calls it needs, is sent their answers, returns its result.
Op: TypeAlias = Generator[Call, Any, T]


class Driver(Generic[T]):
    """Steps an operation for a transport: make :attr:`call` (with :attr:`timeout`), hand its
    answer to :meth:`answer`, and so on until ``call`` is None; then :attr:`result` is set."""

    __slots__ = ("_op", "call", "result", "timeout")

    def __init__(self, op: Op[T], timeout: float | None) -> None:
        self._op = op
        self.timeout = timeout
        self.call: Call | None = None
        self.result: T
        self.answer(None)

    def answer(self, response: Any) -> None:
        """The answer to :attr:`call` (None to start)."""
        try:
            self.call = self._op.send(response)
        except StopIteration as done:
            self.call = None
            self.result = done.value


def submit(cmd: Command, options: Mapping[str, Any], stashed: bool = False) -> Op[int]:
    """Submit one task (stashed: not queued until enqueued); returns its id."""
    request = _submit_request({}, stashed)
    request.tasks.append(_spec("tasks[0]", cmd, options))
    resp = yield Call("Submit", request)
    return int(resp.ids[0])


def submit_many(
    items: Iterable[SpecLike], options: Mapping[str, Any], batch_size: int, stashed: bool = False
) -> Op[list[int]]:
    """Submit many tasks, one call per batch; returns their ids."""
    ids: list[int] = []
    for request in submit_requests(items, options, batch_size, stashed, ids):
        resp = yield Call("Submit", request)
        ids.extend(resp.ids)
    return ids


def get(task_id: int, output: bool) -> Op[TaskResult]:
    """One task's record."""
    task = yield Call("Get", pb.GetRequest(id=task_id, output=output))
    return TaskResult.from_proto(task)


def _list_request(
    states: Iterable[str | int] | None, labels: Mapping[str, str] | None, group: str | None,
    page_size: int, page_token: str = "",
) -> pb.ListRequest:  # fmt: skip
    return pb.ListRequest(
        states=_states(states), labels=dict(labels or {}), page_size=max(1, min(page_size, 1000)),
        group=_group(group), page_token=page_token,
    )  # fmt: skip


def list_page(
    states: Iterable[str | int] | None, labels: Mapping[str, str] | None, group: str | None,
    page_size: int, page_token: str,
) -> Op[tuple[list[TaskResult], str]]:  # fmt: skip
    """One page of records, newest first, and the next page's token ("" after the last)."""
    resp = yield Call("List", _list_request(states, labels, group, page_size, page_token))
    return [TaskResult.from_proto(t) for t in resp.tasks], resp.next_page_token


def list_tasks(
    states: Iterable[str | int] | None,
    labels: Mapping[str, str] | None,
    limit: int,
    group: str | None = None,
) -> Op[list[TaskResult]]:
    """Up to ``limit`` records (of ``group`` only, when given), newest first, page after page."""
    request = _list_request(states, labels, group, limit)
    out: list[TaskResult] = []
    while len(out) < limit:
        resp = yield Call("List", request)
        out.extend(TaskResult.from_proto(t) for t in resp.tasks[: limit - len(out)])
        if not resp.next_page_token:
            break
        request.page_token = resp.next_page_token  # the same filters, the next page
    return out


def cancel(
    ids: Iterable[int],
    all: bool,
    labels: Mapping[str, str] | None,
    states: Iterable[str | int] | None,
    group: str | None = None,
) -> Op[dict[int, bool]]:
    """Cancel in one request; maps each task asked or selected to whether it was cancelled."""
    request = pb.CancelRequest(
        ids=_id_list(ids),
        all=all,
        labels=dict(labels or {}),
        states=_states(states),
        group=_group(group),
    )
    if not (request.ids or request.all or request.labels or request.states or request.group):
        return {}  # nothing asked: no request (the daemon would refuse an empty one)
    resp = yield Call("Cancel", request)
    return {r.id: r.cancelled for r in resp.results}


def stats(group: str | None = None) -> Op[Stats]:
    """Workers, queue and counts (of one group, when given)."""
    return Stats.from_proto((yield Call("Stats", pb.StatsRequest(group=_group(group)))))


def metrics(group: str | None = None) -> Op[Metrics]:
    """Rates, latencies and totals (of one group, when given)."""
    return Metrics.from_proto((yield Call("Metrics", pb.MetricsRequest(group=_group(group)))))


def clean(older_than: float | str | None) -> Op[int]:
    """Remove finished tasks; returns how many."""
    request = pb.CleanRequest()
    _set_duration(request, "older_than", older_than)
    resp = yield Call("Clean", request)
    return int(resp.removed)


# -- operations: controlling the queue ---------------------------------------------------------


def add_group(name: str, parallel: int | None, max_parallel: int | None) -> Op[Group]:
    """Create a group; returns it."""
    request = pb.AddGroupRequest(
        name=_name("name", name),
        parallel=_whole("parallel", parallel),
        max_parallel=_whole("max_parallel", max_parallel),
    )
    return Group.from_proto((yield Call("AddGroup", request)))


def remove_group(name: str, force: bool) -> Op[int]:
    """Remove a group; returns how many of its tasks ``force`` cancelled."""
    resp = yield Call("RemoveGroup", pb.RemoveGroupRequest(name=_name("name", name), force=force))
    return int(resp.cancelled)


def groups() -> Op[list[Group]]:
    """Every group, by name."""
    resp = yield Call("ListGroups", pb.ListGroupsRequest())
    return [Group.from_proto(g) for g in resp.groups]


def set_parallel(parallel: int, group: str | None, max_parallel: int | None) -> Op[Group]:
    """Change a group's slots; returns the group."""
    request = pb.SetParallelRequest(group=_group(group), parallel=_whole("parallel", parallel))
    if max_parallel is not None:
        request.max_parallel = _whole("max_parallel", max_parallel)
    return Group.from_proto((yield Call("SetParallel", request)))


def pause(
    ids: Iterable[int], groups: str | Iterable[str] | None, all: bool, wait: bool
) -> Op[list[int]]:
    """Pause tasks and groups; returns the ids of the tasks paused."""
    request = pb.PauseRequest(
        ids=_id_list(ids), groups=_names("groups", groups), all=all, wait=wait
    )
    if not (request.ids or request.groups or request.all):
        return []  # nothing asked: no request
    return list((yield Call("Pause", request)).paused)


def resume(ids: Iterable[int], groups: str | Iterable[str] | None, all: bool) -> Op[list[int]]:
    """Resume tasks and groups; returns the ids of the tasks resumed."""
    request = pb.ResumeRequest(ids=_id_list(ids), groups=_names("groups", groups), all=all)
    if not (request.ids or request.groups or request.all):
        return []
    return list((yield Call("Resume", request)).resumed)


def set_priority(ids: Iterable[int], priority: str | int) -> Op[None]:
    """Give queued or stashed tasks a new priority."""
    try:
        level = _priority(priority)
    except _BAD_VALUE as err:
        raise _bad("priority", err) from None
    request = pb.SetPriorityRequest(ids=_id_list(ids), priority=level)
    if request.ids:
        yield Call("SetPriority", request)


def enqueue(ids: Iterable[int], delay: float | str | None) -> Op[None]:
    """Queue stashed tasks, at once or after ``delay``."""
    request = pb.EnqueueRequest(ids=_id_list(ids))
    _set_duration(request, "delay", delay)
    if request.ids:
        yield Call("Enqueue", request)


def remove(ids: Iterable[int]) -> Op[int]:
    """Delete finished tasks from the journal; returns how many."""
    request = pb.RemoveRequest(ids=_id_list(ids))
    if not request.ids:
        return 0
    return int((yield Call("Remove", request)).removed)


def signal(task_id: int, sig: str | int) -> Op[None]:
    """Send a signal (a name such as ``"USR1"``, or a number) to a running task's processes."""
    (task,) = _id_list([task_id], "id")
    if isinstance(sig, bool) or not isinstance(sig, str | int):
        raise InvalidTask(f"signal: not a signal name or number: {sig!r}", field="signal")
    yield Call("Signal", pb.SignalRequest(id=task, signal=str(sig)))


# -- operations: workflows ---------------------------------------------------------------------

#: The keywords of ``edit``, and the TaskSpec field each changes (``EditRequest.update_mask``).
EDITABLE: dict[str, str] = {
    "cmd": "argv",
    "argv": "argv",
    "shell": "shell",
    "env": "env",
    "cwd": "cwd",
    "stdin": "stdin",
    "priority": "priority",
    "timeout": "timeout",
    "queue_timeout": "queue_timeout",
    "labels": "labels",
    "retries": "retries",
    "max_requeues": "max_retries",
    "on_finish": "on_finish",
}


def edit_spec(where: str, fields: Mapping[str, Any]) -> tuple[pb.TaskSpec, FieldMask]:
    """The spec and the field mask that change the fields given, each keyword meaning what it
    means to ``submit`` (``env=None``: your environment; ``timeout=None``: no limit;
    ``max_requeues=None``: the daemon's; ``cmd`` a string: ``shlex.split`` unless ``shell``).
    Errors name the field as ``where.field`` (``spec.timeout``)."""
    unknown = [k for k in fields if k not in EDITABLE]
    if unknown or not fields:
        what = f"{unknown[0]!r} cannot be changed" if unknown else "nothing to change"
        raise InvalidTask(
            f"update_mask: {what} (give any of {', '.join(EDITABLE)})", field="update_mask"
        )
    if "cmd" in fields and "argv" in fields:
        raise InvalidTask(f"{where}.argv: give cmd or argv, not both", field=f"{where}.argv")
    options = {k: v for k, v in fields.items() if k not in ("cmd", "argv")}
    spec = _spec(where, fields.get("cmd", fields.get("argv", ())), options)
    paths = list(dict.fromkeys(EDITABLE[k] for k in fields))
    for name in {f.name for f in spec.DESCRIPTOR.fields} - set(paths):
        spec.ClearField(cast(Any, name))  # unchanged fields are not sent (your env, cwd...)
    return spec, FieldMask(paths=paths)


def _changed(task: pb.Task, spec: pb.TaskSpec, mask: FieldMask) -> pb.TaskSpec:
    """A copy of the task's spec with the masked fields of ``spec``, without what Restart does
    not carry over (``after``, ``start_at``)."""
    out = pb.TaskSpec()
    out.CopyFrom(task.spec)
    for name in ("after", "after_tasks", "after_any", "start_at"):
        out.ClearField(name)
    mask.MergeMessage(spec, out, replace_message_field=True, replace_repeated_field=True)
    return out


def restart(ids: Iterable[int], failed: bool, specs: Iterable[SpecLike] | None) -> Op[list[int]]:
    """Submit finished tasks again (and every FAILED one, with ``failed``); returns the new ids.

    ``specs``, one per id: a ``TaskSpec`` sent as it is, or the changes to make to a copy of the
    original's spec, as ``edit`` keywords (a command alone: its ``cmd``), which cost one Get
    each."""
    request = pb.RestartRequest(ids=_id_list(ids), failed=failed)
    changes: list[pb.TaskSpec | tuple[pb.TaskSpec, FieldMask]] = []
    for i, item in enumerate(specs or ()):
        where = f"specs[{i}]"
        if isinstance(item, pb.TaskSpec):
            changes.append(item)
        else:
            changes.append(edit_spec(where, item if isinstance(item, Mapping) else {"cmd": item}))
    if changes and len(changes) != len(request.ids):
        raise InvalidTask(
            f"specs: {len(changes)} specs for {len(request.ids)} ids: give one per id",
            field="specs",
        )
    if not (request.ids or request.failed):
        return []  # nothing asked: no request
    for task_id, change in zip(request.ids, changes, strict=False):
        if not isinstance(change, pb.TaskSpec):
            change = _changed((yield Call("Get", pb.GetRequest(id=task_id))), *change)
        request.specs.append(change)
    return list((yield Call("Restart", request)).ids)


def edit(task_id: int, fields: Mapping[str, Any]) -> Op[TaskResult]:
    """Change fields of a task that has not started; returns its record."""
    (task,) = _id_list([task_id], "id")
    spec, mask = edit_spec("spec", fields)
    request = pb.EditRequest(id=task, spec=spec, update_mask=mask)
    return TaskResult.from_proto((yield Call("Edit", request)))


def add_schedule(cmd: Command, options: Mapping[str, Any]) -> Op[Schedule]:
    """Create a schedule: a task from ``cmd`` and ``options`` every ``every`` or at each match of
    ``cron``, the first at ``start_at`` (see ``ScheduleOptions``); returns it."""
    spec_options = dict(options)
    every = spec_options.pop("every", None)
    cron = spec_options.pop("cron", None)
    overlap = bool(spec_options.pop("overlap", False))
    start_at = spec_options.pop("start_at", None)
    request = pb.AddScheduleRequest(task=_spec("task", cmd, spec_options), overlap=overlap)
    if (every is None) == (cron is None):
        raise InvalidTask("every: give every or cron, one of them", field="every")
    _set_duration(request, "every", every)
    if cron is not None:
        if not isinstance(cron, str):
            raise InvalidTask(f"cron: not a cron expression: {cron!r}", field="cron")
        request.cron = cron
    try:
        _set_time(request.start_at, start_at)
    except _BAD_VALUE as err:
        raise _bad("start_at", err) from None
    return Schedule.from_proto((yield Call("AddSchedule", request)))


def schedules() -> Op[list[Schedule]]:
    """Every schedule, by id."""
    resp = yield Call("ListSchedules", pb.ListSchedulesRequest())
    return [Schedule.from_proto(s) for s in resp.schedules]


def remove_schedule(schedule_id: int) -> Op[None]:
    """Remove a schedule (its tasks already submitted stay)."""
    (sid,) = _id_list([schedule_id], "id")
    yield Call("RemoveSchedule", pb.RemoveScheduleRequest(id=sid))


def shutdown(mode: str) -> Op[None]:
    """Stop the daemon: ``stop``, ``drain`` or ``kill``."""
    try:
        value = pb.ShutdownMode.Value("SHUTDOWN_MODE_" + mode.upper())
    except ValueError:
        raise InvalidTask(
            f"mode: invalid shutdown mode {mode!r}: use stop, drain or kill", field="mode"
        ) from None
    yield Call("Shutdown", pb.ShutdownRequest(mode=value))


# -- streams ----------------------------------------------------------------------------------


class Waiter:
    """One wait for tasks to finish, for either client: its StreamResults requests, and the
    results their ``finished`` events carry.

    ``ids`` None waits for every task live when the wait starts (of ``group`` only, when given),
    with one ``all_live`` request (any number). Else one ``finished_only`` request per 10,000
    ids: a transport makes them all at once (so each task is watched from the start, and an
    unknown id fails the wait at once), feeds every event of every stream to :meth:`feed`, then
    asks :meth:`results`. No other round trip: a finished task's result comes on its stream too.
    """

    def __init__(
        self,
        ids: Iterable[int] | None,
        *,
        output: bool = False,
        timeout: float | None = None,
        on_result: ResultCallback | None = None,
        group: str | None = None,
    ) -> None:
        self.ids = None if ids is None else _id_list(ids)
        self.timeout = timeout
        self._on_result = on_result
        self._results: dict[int, TaskResult] = {}
        if self.ids is None:
            chunks: list[list[int]] = [[]]
        else:
            chunks = [self.ids[i : i + MAX_IDS] for i in range(0, len(self.ids), MAX_IDS)]
        self.requests = [
            pb.StreamResultsRequest(
                ids=chunk,
                output=output,
                finished_only=True,
                all_live=self.ids is None,
                batch=not output,  # what had ended comes many to a message
                group=_group(group),
            )
            for chunk in chunks
        ]

    def feed(self, event: pb.TaskEvent) -> None:
        """Take one event of any of the streams."""
        kind = event.WhichOneof("kind")
        if kind == "finished":
            self._take(event.finished.task)
        elif kind == "finished_many":
            for task in event.finished_many.tasks:
                self._take(task)

    def _take(self, task: pb.Task) -> None:
        result = TaskResult.from_proto(task)
        self._results[result.id] = result
        if self._on_result is not None:
            self._on_result(result)

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        """Around the streams: a wait past its ``timeout`` says how much is left."""
        try:
            yield
        except DeadlineExceeded:
            raise DeadlineExceeded(f"{self._left()} not finished after {self.timeout}s") from None

    def _left(self) -> str:
        if self.ids is None:
            return f"live tasks ({len(self._results)} finished meanwhile)"
        if len(self.ids) == 1:
            return f"task {self.ids[0]}"
        return f"{len(self.ids) - len(self._results)} of {len(self.ids)} tasks"

    def results(self, socket: Path | str) -> list[TaskResult]:
        """The results, in the order of ``ids`` (by id for ``all_live``), once the streams have
        ended; :class:`DaemonUnavailable` if they ended before every task finished (the daemon
        stopped)."""
        if self.ids is None:
            return [self._results[i] for i in sorted(self._results)]
        if len(self._results) < len(self.ids):
            left = self._left()
            raise DaemonUnavailable(socket, f"event stream ended before {left} finished")
        return [self._results[i] for i in self.ids]


class RunCollector:
    """Drives a Run stream for both clients: passes output chunks to ``on_output`` and returns
    the final result with the collected output."""

    def __init__(self, on_output: OutputCallback | None = None) -> None:
        self.on_output = on_output
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []

    def feed(self, ev: TaskEvent) -> TaskResult | None:
        """Take one event; return the result when it is the ``finished`` one."""
        if ev.kind == "output" and ev.stream:
            (self.stderr if ev.stream == "stderr" else self.stdout).append(ev.data)
            if self.on_output is not None:
                self.on_output(ev.stream, ev.data)
        elif ev.kind == "finished" and ev.result is not None:
            r = ev.result
            return dataclasses.replace(
                r,
                stdout=r.stdout or b"".join(self.stdout),
                stderr=r.stderr or b"".join(self.stderr),
            )
        return None

    @staticmethod
    def unfinished() -> TaskerError:
        """The error for a Run stream that ended without its ``finished`` event."""
        return TaskerError("the Run stream ended before the task finished")

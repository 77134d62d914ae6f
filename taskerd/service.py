"""The ``tasker.v1.Tasker`` gRPC service: one handler per RPC, each a thin call into ``Core``.

Every handler validates its request (``taskerd.validate``), calls the core, and builds the reply.
Errors take one path: a ``RequestError`` becomes its status code; anything else is logged and
answered ``INTERNAL``, and the daemon keeps running. Handlers decode their own requests (see
``add_to_server``), so that bytes that are no request get ``INVALID_ARGUMENT`` too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from tasker.events import ended_ids
from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerd import auth, compat, control, editing, validate
from taskerd.core import Core
from taskerd.errors import InvalidArgument, PermissionDenied, RequestError, clip
from taskerd.peers import Peers
from taskerd.schedules import Scheduler

log = logging.getLogger("taskerd")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context: TypeAlias = Any  # grpc.aio.ServicerContext; grpcio ships no type information

#: What ``all_live`` waits for: live tasks that end without being told to (not stashed ones).
_WILL_RUN = (pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING, pb.TASK_STATE_PAUSED)

_TASKER = pb.DESCRIPTOR.services_by_name["Tasker"]
#: Each RPC's request parser, by method name: the very function grpcio would call.
_PARSERS: dict[str, Callable[[bytes], Any]] = {
    m.name: GetMessageClass(m.input_type).FromString for m in _TASKER.methods
}


def add_to_server(service: Service, server: Any) -> None:
    """Serve ``service`` as ``tasker.v1.Tasker`` on ``server`` (a ``grpc.aio.Server``).

    As the generated ``add_TaskerServicer_to_server`` does, but the requests reach the handlers
    as bytes, which they decode themselves (``unary``, ``streaming``): grpcio answers a request
    it fails to decode with UNKNOWN.
    """
    handlers = {
        m.name: (
            grpc.unary_stream_rpc_method_handler
            if m.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )(
            getattr(service, m.name),
            response_serializer=GetMessageClass(m.output_type).SerializeToString,
        )
        for m in _TASKER.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_TASKER.full_name, handlers),)
    )
    server.add_registered_method_handlers(_TASKER.full_name, handlers)


def _decode(parse: Callable[[bytes], Req], request: Req | bytes) -> Req:
    """The request, decoded from bytes (``add_to_server``) unless grpcio decoded it already."""
    if not isinstance(request, bytes):
        return request
    try:
        return parse(request)
    except DecodeError:  # bad wire format, or a string field that is not UTF-8
        raise InvalidArgument("request", "cannot be decoded") from None


async def _abort(context: Context, exc: BaseException) -> None:
    """The one mapping from an exception to the status the client sees (its message clipped)."""
    if isinstance(exc, RequestError):
        await context.abort(exc.code, clip(str(exc)))
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, clip(f"internal error: {exc!r}"))


def unary(
    fn: Callable[[Service, Req, Context], Awaitable[Resp]],
) -> Callable[[Service, Req | bytes, Context], Awaitable[Resp]]:
    """Wrap a unary handler (named after its RPC) with the request's decoding and the error
    mapping."""
    parse = _PARSERS[fn.__name__]

    @wraps(fn)
    async def handler(self: Service, request: Req | bytes, context: Context) -> Resp:
        try:
            return await fn(self, _decode(parse, request), context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises

    return handler


def streaming(
    fn: Callable[[Service, Req, Context], AsyncIterator[Resp]],
) -> Callable[[Service, Req | bytes, Context], AsyncIterator[Resp]]:
    """Wrap a server-streaming handler (named after its RPC) with the request's decoding and the
    error mapping."""
    parse = _PARSERS[fn.__name__]

    @wraps(fn)
    async def handler(self: Service, request: Req | bytes, context: Context) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, _decode(parse, request), context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return handler


class Service(pb_grpc.TaskerServicer):
    """The gRPC face of the daemon."""

    def __init__(
        self,
        core: Core,
        scheduler: Scheduler,
        on_shutdown: Callable[[pb.ShutdownMode.ValueType], Any],
        peers: Peers,
    ) -> None:
        self.core = core
        self.scheduler = scheduler
        self._on_shutdown = on_shutdown
        #: The Unix socket's side door, to tell who a Unix-socket caller is.
        self.peers = peers

    async def _submitter(self, context: Context) -> str:
        """Who submits: a token's name over TCP; over the Unix socket ``unix:USER`` when the
        client showed itself at the side door (:mod:`taskerd.peers`), else ""."""
        who = auth.caller.get()
        if who is not auth.UNIX:
            return who.name
        return await self.peers.name(context.invocation_metadata())

    @unary
    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.SubmitResponse:
        validate.submit(request)
        by = await self._submitter(context)
        ids = await self.core.submit(request.tasks, env=request.env, stashed=request.stashed, by=by)
        # No await from here on: a client that cancels now must not be left without the ids
        # of tasks that exist (yielding to let a woken worker spawn first was measured: 0.3 ms
        # of submit-to-exec, not worth that).
        return pb.SubmitResponse(ids=ids)

    @streaming
    async def StreamResults(
        self, request: pb.StreamResultsRequest, context: Context
    ) -> AsyncIterator[pb.TaskEvent]:
        validate.ids("ids", request.ids)
        ids = list(request.ids)
        if request.all_live:
            ids += self.core.select(_WILL_RUN, {}, request.group)
            if not ids:  # nothing to wait for
                return
        watcher, past = await self.core.watch(
            ids, output=request.output, finished_only=request.finished_only, batch=request.batch
        )
        seen_by = compat.level(context)
        old = not request.finished_only and seen_by < 2
        try:
            finished: set[int] = set()
            for event in past:
                if request.output and event.WhichOneof("kind") == "finished":
                    event = await self.core.with_output(event)  # one output in memory at a time
                if old and not compat.shown(event, seen_by):
                    continue
                yield event
                finished.update(ended_ids(event))
            if watcher.remaining is not None:
                watcher.remaining -= finished
                if not watcher.remaining:
                    return
            async for event in watcher.events():
                if old and not compat.shown(event, seen_by):
                    continue
                yield event
        finally:
            watcher.close()

    @unary
    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.CancelResponse:
        ids = ([request.id] if request.id else []) + list(request.ids)
        validate.ids("ids", ids)
        selecting = (
            request.all or bool(request.labels) or bool(request.states) or bool(request.group)
        )
        if not ids and not selecting:
            raise InvalidArgument(
                "ids", "name at least one task, or select with all/labels/states/group"
            )
        who = auth.caller.get()
        if who.role == "submit":  # its own tasks only
            for task_id in ids:
                if self.core.submitter(task_id) not in (None, who.name):
                    raise PermissionDenied(
                        f"task {task_id} was not submitted by {who.name!r}, whose token (role "
                        "submit) may cancel only its own tasks"
                    )
        if selecting:
            validate.states("states", request.states)
            validate.labels("labels", request.labels)
            chosen = self.core.select(request.states, request.labels, request.group)
            if who.role == "submit":
                chosen = [i for i in chosen if self.core.submitter(i) == who.name]
            ids += chosen
        results = await self.core.cancel(ids) if ids else []
        first = results[0] if results else None
        answer = pb.CancelResponse(
            cancelled=first.cancelled if first else False,
            state=first.state if first else pb.TASK_STATE_UNSPECIFIED,
            results=[
                pb.CancelResponse.Result(id=r.id, cancelled=r.cancelled, state=r.state)
                for r in results
            ],
        )
        seen_by = compat.level(context)
        answer.state = compat.state(answer.state, seen_by)
        compat.tasks(answer.results, seen_by)
        return answer

    @unary
    async def Get(self, request: pb.GetRequest, context: Context) -> pb.Task:
        validate.ids("id", [request.id])
        task = await self.core.get(request.id, output=request.output)
        compat.tasks([task], compat.level(context))
        return task

    @unary
    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListResponse:
        validate.states("states", request.states)
        validate.labels("labels", request.labels)
        limit = validate.page_size(request.page_size)
        before = validate.page_token(request.page_token)
        tasks = await self.core.list(
            states=request.states, labels=request.labels, limit=limit + 1, before_id=before,
            group=request.group,
        )  # fmt: skip
        more = len(tasks) > limit
        tasks = tasks[:limit]
        token = str(tasks[-1].id) if more and tasks else ""
        compat.tasks(tasks, compat.level(context))
        return pb.ListResponse(tasks=tasks, next_page_token=token)

    @streaming
    async def Run(self, request: pb.RunRequest, context: Context) -> AsyncIterator[pb.TaskEvent]:
        validate.spec(request.task, "task")
        task_id, watcher = await self.core.run(request.task, by=await self._submitter(context))
        finished = False
        try:
            async for event in watcher.events():
                finished = event.WhichOneof("kind") == "finished"
                yield event
        finally:
            watcher.close()
            if not finished:  # the client went away (or the stream failed): the task ends too
                await asyncio.shield(self.core.abandon(task_id))

    @unary
    async def Stats(self, request: pb.StatsRequest, context: Context) -> pb.StatsResponse:
        return self.core.stats(request.group)

    @unary
    async def Metrics(self, request: pb.MetricsRequest, context: Context) -> pb.MetricsResponse:
        return self.core.metrics(request.group)

    @unary
    async def Clean(self, request: pb.CleanRequest, context: Context) -> pb.CleanResponse:
        older = validate.older_than(request.older_than if request.HasField("older_than") else None)
        return pb.CleanResponse(removed=await self.core.clean(older))

    @unary
    async def Shutdown(self, request: pb.ShutdownRequest, context: Context) -> pb.ShutdownResponse:
        self._on_shutdown(validate.shutdown_mode(request.mode))
        return pb.ShutdownResponse()

    @unary
    async def AddGroup(self, request: pb.AddGroupRequest, context: Context) -> pb.Group:
        return await control.add_group(
            self.core, request.name, request.parallel, request.max_parallel
        )

    @unary
    async def RemoveGroup(
        self, request: pb.RemoveGroupRequest, context: Context
    ) -> pb.RemoveGroupResponse:
        cancelled = await control.remove_group(self.core, request.name, request.force)
        return pb.RemoveGroupResponse(cancelled=cancelled)

    @unary
    async def ListGroups(
        self, request: pb.ListGroupsRequest, context: Context
    ) -> pb.ListGroupsResponse:
        return pb.ListGroupsResponse(groups=control.list_groups(self.core))

    @unary
    async def SetParallel(self, request: pb.SetParallelRequest, context: Context) -> pb.Group:
        ceiling = request.max_parallel if request.HasField("max_parallel") else None
        return await control.set_parallel(self.core, request.group, request.parallel, ceiling)

    @unary
    async def Pause(self, request: pb.PauseRequest, context: Context) -> pb.PauseResponse:
        validate.ids("ids", request.ids)
        paused = await control.pause(
            self.core, request.ids, request.groups, request.all, request.wait
        )
        return pb.PauseResponse(paused=paused)

    @unary
    async def Resume(self, request: pb.ResumeRequest, context: Context) -> pb.ResumeResponse:
        validate.ids("ids", request.ids)
        resumed = await control.resume(self.core, request.ids, request.groups, request.all)
        return pb.ResumeResponse(resumed=resumed)

    @unary
    async def SetPriority(
        self, request: pb.SetPriorityRequest, context: Context
    ) -> pb.SetPriorityResponse:
        validate.ids("ids", request.ids, required=True)
        validate.priority("priority", request.priority)
        await control.set_priority(self.core, request.ids, request.priority)
        return pb.SetPriorityResponse()

    @unary
    async def Enqueue(self, request: pb.EnqueueRequest, context: Context) -> pb.EnqueueResponse:
        validate.ids("ids", request.ids, required=True)
        delay = validate.delay("delay", request.delay) if request.HasField("delay") else None
        await control.enqueue(self.core, request.ids, delay)
        return pb.EnqueueResponse()

    @unary
    async def Remove(self, request: pb.RemoveRequest, context: Context) -> pb.RemoveResponse:
        validate.ids("ids", request.ids, required=True)
        return pb.RemoveResponse(removed=await control.remove(self.core, request.ids))

    @unary
    async def Signal(self, request: pb.SignalRequest, context: Context) -> pb.SignalResponse:
        validate.ids("id", [request.id], required=True)
        await control.send_signal(self.core, request.id, request.signal)
        return pb.SignalResponse()

    @unary
    async def Restart(self, request: pb.RestartRequest, context: Context) -> pb.RestartResponse:
        validate.ids("ids", request.ids)
        ids = await editing.restart(self.core, request.ids, request.failed, request.specs)
        return pb.RestartResponse(ids=ids)

    @unary
    async def Edit(self, request: pb.EditRequest, context: Context) -> pb.Task:
        validate.ids("id", [request.id], required=True)
        task = await editing.edit(self.core, request.id, request.spec, request.update_mask)
        compat.tasks([task], compat.level(context))
        return task

    @unary
    async def AddSchedule(self, request: pb.AddScheduleRequest, context: Context) -> pb.Schedule:
        return await self.scheduler.add(request)

    @unary
    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        return pb.ListSchedulesResponse(schedules=self.scheduler.list())

    @unary
    async def RemoveSchedule(
        self, request: pb.RemoveScheduleRequest, context: Context
    ) -> pb.RemoveScheduleResponse:
        await self.scheduler.remove(request.id)
        return pb.RemoveScheduleResponse()

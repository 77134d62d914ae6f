"""The ``tasker.v1.Tasker`` gRPC service: one handler per RPC, each a thin call into ``Core``.

Every handler validates its request (``taskerd.validate``), calls the core, and builds the reply.
Errors take one path: a ``RequestError`` becomes its status code; anything else is logged and
answered ``INTERNAL``, and the daemon keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeAlias, TypeVar

import grpc

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerd import validate
from taskerd.core import Core
from taskerd.errors import RequestError
from taskerd.events import WatcherTooSlow

log = logging.getLogger("taskerd")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context: TypeAlias = Any  # grpc.aio.ServicerContext; grpcio ships no type information


async def _abort(context: Context, exc: BaseException) -> None:
    """The one mapping from an exception to the status the client sees."""
    if isinstance(exc, RequestError):
        await context.abort(exc.code, str(exc))
    if isinstance(exc, WatcherTooSlow):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    log.exception("internal error", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")


def unary(
    fn: Callable[[Service, Req, Context], Awaitable[Resp]],
) -> Callable[[Service, Req, Context], Awaitable[Resp]]:
    """Wrap a unary handler with the error mapping."""

    @wraps(fn)
    async def handler(self: Service, request: Req, context: Context) -> Resp:
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises

    return handler


def streaming(
    fn: Callable[[Service, Req, Context], AsyncIterator[Resp]],
) -> Callable[[Service, Req, Context], AsyncIterator[Resp]]:
    """Wrap a server-streaming handler with the error mapping."""

    @wraps(fn)
    async def handler(self: Service, request: Req, context: Context) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return handler


class Service(pb_grpc.TaskerServicer):
    """The gRPC face of the daemon."""

    def __init__(self, core: Core, on_shutdown: Callable[[pb.ShutdownMode.ValueType], Any]) -> None:
        self.core = core
        self._on_shutdown = on_shutdown

    @unary
    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.SubmitResponse:
        validate.submit(request)
        ids = await self.core.submit(request.tasks, env=request.env)
        return pb.SubmitResponse(ids=ids)

    @streaming
    async def StreamResults(
        self, request: pb.StreamResultsRequest, context: Context
    ) -> AsyncIterator[pb.TaskEvent]:
        validate.ids("ids", request.ids)
        watcher, past = self.core.watch(
            list(request.ids), output=request.output, finished_only=request.finished_only
        )
        try:
            finished: set[int] = set()
            for event in past:
                yield event
                if event.WhichOneof("kind") == "finished":
                    finished.add(event.task_id)
            if watcher.remaining is not None:
                watcher.remaining -= finished
                if not watcher.remaining:
                    return
            async for event in watcher.events():
                yield event
        finally:
            watcher.close()

    @unary
    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.CancelResponse:
        validate.ids("id", [request.id])
        cancelled, state = self.core.cancel(request.id)
        return pb.CancelResponse(cancelled=cancelled, state=state)

    @unary
    async def Get(self, request: pb.GetRequest, context: Context) -> pb.Task:
        validate.ids("id", [request.id])
        return self.core.get(request.id, output=request.output)

    @unary
    async def List(self, request: pb.ListRequest, context: Context) -> pb.ListResponse:
        validate.states("states", request.states)
        limit = validate.page_size(request.page_size)
        before = validate.page_token(request.page_token)
        tasks = self.core.list(
            states=request.states, labels=request.labels, limit=limit + 1, before_id=before
        )
        more = len(tasks) > limit
        tasks = tasks[:limit]
        token = str(tasks[-1].id) if more and tasks else ""
        return pb.ListResponse(tasks=tasks, next_page_token=token)

    @streaming
    async def Run(self, request: pb.RunRequest, context: Context) -> AsyncIterator[pb.TaskEvent]:
        validate.spec(request.task, "task")
        watcher = await self.core.run(request.task)
        try:
            async for event in watcher.events():
                yield event
        finally:
            watcher.close()

    @unary
    async def Stats(self, request: pb.StatsRequest, context: Context) -> pb.StatsResponse:
        return self.core.stats()

    @unary
    async def Metrics(self, request: pb.MetricsRequest, context: Context) -> pb.MetricsResponse:
        return self.core.metrics()

    @unary
    async def Clean(self, request: pb.CleanRequest, context: Context) -> pb.CleanResponse:
        older = validate.older_than(request.older_than if request.HasField("older_than") else None)
        return pb.CleanResponse(removed=await self.core.clean(older))

    @unary
    async def Shutdown(self, request: pb.ShutdownRequest, context: Context) -> pb.ShutdownResponse:
        self._on_shutdown(validate.shutdown_mode(request.mode))
        return pb.ShutdownResponse()

"""The dashboard's web application (Starlette): pages, server-sent events, actions, access.

Access: with a token, every page and call but ``/login`` and ``/static`` needs the session
cookie that ``/login`` (or ``?token=`` once) sets, or ``Authorization: Bearer TOKEN``; tokens
are compared in constant time. Actions are POSTs that carry the header ``X-Tasker: 1`` (which a
page of another origin cannot send without a preflight the dashboard never grants) and, when
the browser says its ``Origin``, the dashboard's own. On a loopback bind the ``Host`` must be a
loopback name (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from taskerctl._async import AsyncClient
from taskerctl._submit import argv as task_argv
from taskerctl._submit import schedule_start, task_options, when_options
from taskerctl.dashboard.feed import PUSH_RATE, Hub, Query, follow_task
from taskerctl.errors import TaskerError
from taskerctl.models import command_words, parse_id, parse_priority, parse_time

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "tasker_dashboard"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def session_value(token: str) -> str:
    """The session cookie of a token (not the token itself)."""
    return hmac.new(token.encode(), b"tasker-dashboard-session", hashlib.sha256).hexdigest()


class Access:
    """The ASGI middleware that keeps the dashboard to those who hold its token."""

    def __init__(self, app: ASGIApp, token: str | None, loopback: bool) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token else ""
        self.loopback = loopback

    def allowed(self, request: Request) -> bool:
        """Whether the request carries the token (cookie, bearer header)."""
        if self.token is None:
            return True
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session.encode()):
            return True
        auth = request.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
        return bool(bearer) and hmac.compare_digest(bearer.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        host = request.headers.get("host", "").rsplit(":", 1)[0] if request.headers else ""
        if self.loopback and host not in _LOOPBACK_HOSTS:
            await plain_error("not a loopback host name", 421)(scope, receive, send)
            return
        if request.method == "POST" and not path.startswith("/login"):
            origin = request.headers.get("origin")
            if request.headers.get("x-tasker") != "1" or (
                origin is not None and origin.split("://", 1)[-1] != request.headers.get("host")
            ):
                await plain_error("cross-site request refused", 403)(scope, receive, send)
                return
        if self.token is None or path.startswith(("/static/", "/login")):
            await self.app(scope, receive, send)
            return
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            rest = {k: v for k, v in parse_qs(request.url.query).items() if k != "token"}
            target = path + ("?" + urlencode(rest, doseq=True) if rest else "")
            response: Response = RedirectResponse(target, 303)
            _set_cookie(response, self.session)
            await response(scope, receive, send)
            return
        if self.allowed(request):
            await self.app(scope, receive, send)
            return
        if path.startswith("/api/"):
            response = JSONResponse({"error": "log in: this dashboard needs its token"}, 401)
        else:
            response = RedirectResponse("/login?" + urlencode({"next": path}), 303)
        await response(scope, receive, send)


def plain_error(message: str, status: int) -> Response:
    """A plain-text error response."""
    return Response(message + "\n", status, media_type="text/plain")


def _set_cookie(response: Response, session: str) -> None:
    response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/")


_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tasker dashboard: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"></head>
<body><main class="login"><h1>Tasker dashboard</h1>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label for="token">Dashboard token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
<p role="alert" class="error">{error}</p>
</form></main></body></html>
"""


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def create_app(
    client: AsyncClient,
    *,
    token: str | None = None,
    loopback: bool = True,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> ASGIApp:
    """The dashboard's ASGI application over ``client`` (its taskerd).

    ``token``: the dashboard's own token (None: none needed, for a loopback bind).
    """
    hub = Hub(client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.start()
        if on_ready is not None:
            await on_ready()
        try:
            yield
        finally:
            await hub.stop()

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def task_page(request: Request) -> Response:
        return FileResponse(STATIC / "task.html")

    async def login(request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if request.method == "GET":
            return HTMLResponse(_LOGIN.format(next=_escape(target), error=""))
        form = parse_qs((await request.body()).decode(errors="replace"))  # no multipart needed
        given = (form.get("token") or [""])[0]
        target = (form.get("next") or ["/"])[0]
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if token is not None and hmac.compare_digest(given.encode(), token.encode()):
            response = RedirectResponse(target, 303)
            _set_cookie(response, session_value(token))
            return response
        return HTMLResponse(
            _LOGIN.format(next=_escape(target), error="That is not the dashboard's token."), 401
        )

    async def stream(request: Request) -> Response:
        params = request.query_params
        try:
            query = Query.parse(params.get, params.getlist)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, 400)
        return EventSourceResponse(_push(hub, query, request), ping=15)

    async def task_stream(request: Request) -> Response:
        task_id = int(request.path_params["task_id"])

        async def events() -> AsyncIterator[dict[str, str]]:
            try:
                async for kind, data in follow_task(client, task_id):
                    yield {"event": kind, "data": json.dumps(data)}
            except TaskerError as err:
                yield {"event": "failure", "data": json.dumps({"message": err.message})}

        return EventSourceResponse(events(), ping=15)

    async def action(request: Request) -> Response:
        verb = request.path_params["verb"]
        do = _ACTIONS.get(verb)
        if do is None:
            return JSONResponse({"error": f"no action {verb!r}"}, 404)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            message = await do(client, body)
        except TaskerError as err:
            return JSONResponse({"error": err.message, "code": err.code}, 400)
        except (ValueError, TypeError, KeyError) as err:
            return JSONResponse({"error": str(err)}, 400)
        hub.changed()
        return JSONResponse({"ok": True, "message": message})

    routes = [
        Route("/", page),
        Route("/task/{task_id:int}", task_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/api/stream", stream),
        Route("/api/tasks/{task_id:int}/stream", task_stream),
        Route("/api/actions/{verb}", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return Access(app, token, loopback)


async def _push(hub: Hub, query: Query, request: Request) -> AsyncIterator[dict[str, str]]:
    """One browser's events: ``header`` (with new chart samples) and ``page``, each the latest
    state, at most :data:`PUSH_RATE` times a second, and only when it changed."""
    view = hub.open_view(query)
    sent_header = sent_page = -1
    sent_sample = 0
    try:
        while True:
            seen = hub.pushed.version
            if hub.header_version != sent_header:
                sent_header = hub.header_version
                samples = hub.samples_after(sent_sample)
                if samples:
                    sent_sample = samples[-1]["seq"]
                doc = {**hub.header, "samples": samples}
                yield {"event": "header", "data": json.dumps(doc)}
            if view.page is not None and view.version != sent_page:
                sent_page = view.version
                doc = {**view.page.to_json(), "sent": time.time()}
                yield {"event": "page", "data": json.dumps(doc)}
            await asyncio.sleep(1 / PUSH_RATE)
            await hub.pushed.wait_past(seen, 10.0)
            if await request.is_disconnected():
                return
    finally:
        hub.close_view(view)


# -- actions -------------------------------------------------------------------------------------


def _ids(body: Mapping[str, Any]) -> list[int]:
    ids = body.get("ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) and i > 0 for i in ids):
        raise ValueError("ids: a list of task ids")
    return ids


def _groups(body: Mapping[str, Any]) -> list[str]:
    groups = body.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ValueError("groups: a list of group names")
    return groups


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


async def _cancel(client: AsyncClient, body: Mapping[str, Any]) -> str:
    done = await client.cancel_many(_ids(body))
    yes = [str(i) for i, ok in done.items() if ok]
    no = [str(i) for i, ok in done.items() if not ok]
    parts = [f"cancelled {', '.join(yes)}"] if yes else []
    if no:
        parts.append(f"{', '.join(no)} had already finished")
    return "; ".join(parts) or "nothing to cancel"


async def _restart(client: AsyncClient, body: Mapping[str, Any]) -> str:
    handles = await client.restart(_ids(body))
    return "submitted again as " + ", ".join(str(h.id) for h in handles)


async def _priority(client: AsyncClient, body: Mapping[str, Any]) -> str:
    level = parse_priority(str(body.get("priority", "")))
    ids = _ids(body)
    await client.set_priority(ids, level)
    return f"{_plural(len(ids), 'task')} now {level.name.lower()}"


async def _pause(client: AsyncClient, body: Mapping[str, Any]) -> str:
    paused = await client.pause(_ids(body), groups=_groups(body), wait=bool(body.get("wait")))
    names = ", ".join(_groups(body))
    return (f"paused group {names}; " if names else "") + f"{_plural(len(paused), 'task')} paused"


async def _resume(client: AsyncClient, body: Mapping[str, Any]) -> str:
    resumed = await client.resume(_ids(body), groups=_groups(body))
    names = ", ".join(_groups(body))
    head = f"resumed group {names}; " if names else ""
    return head + f"{_plural(len(resumed), 'task')} resumed"


def _pairs(text: object, what: str) -> dict[str, str]:
    """``K=V`` pairs, one per line or separated by commas."""
    out: dict[str, str] = {}
    for item in str(text or "").replace(",", "\n").splitlines():
        if not item.strip():
            continue
        key, eq, value = item.strip().partition("=")
        if not eq or not key:
            raise ValueError(f"{what}: {item.strip()!r} is not K=V")
        out[key] = value
    return out


def _number(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value in (None, ""):
        return None
    number = int(str(value))
    if number < 0:
        raise ValueError(f"{key}: a whole number >= 0")
    return number


def _duration(body: Mapping[str, Any], key: str) -> float | None:
    from taskerctl.models import to_seconds

    value = body.get(key)
    if value in (None, ""):
        return None
    try:
        return to_seconds(str(value))
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


def _id_list(body: Mapping[str, Any], key: str) -> list[int]:
    """Task ids separated by commas or spaces."""
    try:
        return [parse_id(word) for word in str(body.get(key) or "").replace(",", " ").split()]
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


def _time(body: Mapping[str, Any], key: str) -> Any:
    value = str(body.get(key) or "").strip()
    if not value:
        return None
    try:
        return parse_time(value)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


async def _submit(client: AsyncClient, body: Mapping[str, Any]) -> str:
    """Submit a command with the CLI's options (as ``taskerctl submit`` builds them): a task, or
    with ``every`` or ``cron`` a schedule."""
    shell = bool(body.get("shell"))
    line = str(body.get("command", ""))
    words = command_words(line, script=shell)
    if not words:
        raise ValueError("command: empty")
    options = task_options(
        shell=shell,
        env=_pairs(body.get("env"), "env"),
        labels=_pairs(body.get("labels"), "labels"),
        priority=str(body.get("priority") or "normal"),
        timeout=_duration(body, "timeout"),
        queue_timeout=_duration(body, "queue_timeout"),
        once=bool(body.get("once")),
        retries=_number(body, "retries"),
        max_requeues=_number(body, "max_requeues"),
        cwd=str(body.get("cwd") or "") or os.getcwd(),
        group=str(body.get("group") or "") or None,
        on_finish=str(body.get("on_finish") or "") or None,
    )
    after, delay, at = _id_list(body, "after"), _duration(body, "delay"), _time(body, "at")
    every, cron = _duration(body, "every"), str(body.get("cron") or "").strip() or None
    command = task_argv(words, shell=shell)
    if every is None and cron is None:
        if body.get("overlap"):
            raise ValueError("overlap goes with every or cron")
        any_end = bool(body.get("after_any"))
        timed = when_options(
            options, after=[] if any_end else after, after_any=after if any_end else [],
            delay=delay, at=at,
        )  # fmt: skip
        handle = await client.submit(command, stashed=bool(body.get("stashed")), **timed)
        return f"submitted task {handle.id}"
    if every is not None and cron is not None:
        raise ValueError("give every or cron, not both")
    if after or body.get("stashed"):
        raise ValueError("every and cron make a schedule: it takes no after and is not stashed")
    schedule = await client.add_schedule(
        command, every=every, cron=cron, overlap=bool(body.get("overlap")),
        start_at=schedule_start(delay, at), **options,
    )  # fmt: skip
    return f"made schedule {schedule.id}: {schedule.when}"


async def _unschedule(client: AsyncClient, body: Mapping[str, Any]) -> str:
    schedule_id = _number(body, "id")
    if not schedule_id:
        raise ValueError("id: a schedule's id")
    await client.remove_schedule(schedule_id)
    return f"removed schedule {schedule_id} (the tasks it submitted stay)"


_ACTIONS: dict[str, Callable[[AsyncClient, Mapping[str, Any]], Awaitable[str]]] = {
    "cancel": _cancel,
    "restart": _restart,
    "priority": _priority,
    "pause": _pause,
    "resume": _resume,
    "submit": _submit,
    "unschedule": _unschedule,
}

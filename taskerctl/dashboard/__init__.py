"""``taskerctl dashboard``: a live web page of taskerd's queue, served by a separate process.

It speaks to taskerd through :class:`~taskerctl.AsyncClient` (the Unix socket, or TCP with TLS
and a token), as any client does, and adds nothing to the daemon. Needs the extra
``tasker[dashboard]`` (Starlette, uvicorn, sse-starlette). See :mod:`.feed` for how it holds
thousands of events a second (it coalesces) and :mod:`.app` for access control.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tasker.addresses import is_loopback, split_address
from taskerctl.errors import TaskerError


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) → (host, port)."""
    try:
        host, port = split_address(bind)
    except ValueError:
        raise TaskerError(f"--bind {bind!r}: use HOST:PORT, such as 127.0.0.1:8080") from None
    return host or "127.0.0.1", port


def serve(bind: str, *, token: str | None, open_browser: bool, client: dict[str, Any]) -> None:
    """Serve the dashboard on ``bind`` until interrupted. ``token``: the dashboard's own token
    (required off loopback); ``client``: :class:`~taskerctl.AsyncClient`'s arguments."""
    host, port = parse_bind(bind)
    loopback = is_loopback(host)
    if not loopback and not token:
        raise TaskerError(
            f"--bind {bind}: not a loopback address; give the dashboard a token (--token or "
            "--web-token-file) that the browser then sends, or bind to 127.0.0.1"
        )
    try:
        import uvicorn

        from taskerctl._async import AsyncClient
        from taskerctl.dashboard.app import create_app
    except ImportError as err:
        raise TaskerError(
            f"the dashboard needs {err.name}: pip install 'tasker[dashboard]'"
        ) from None

    server: uvicorn.Server | None = None

    async def ready() -> None:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:"
        while server is None or not server.started:  # the real port (--bind :0)
            await asyncio.sleep(0.01)
        sockets = [s for srv in server.servers for s in srv.sockets]
        url += str(sockets[0].getsockname()[1] if sockets else port) + "/"
        print(f"taskerctl: dashboard on {url}", file=sys.stderr, flush=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url + (f"?token={token}" if token else ""))

    app = create_app(
        AsyncClient(client.pop("socket", None), rpc_timeout=10.0, **client),
        token=token,
        loopback=loopback,
        on_ready=None,
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        assert server is not None
        announce = asyncio.ensure_future(ready())
        try:
            await server.serve()
        finally:
            announce.cancel()

    asyncio.run(main())

"""Where the daemon's socket lives by default, shared by the daemon and its clients.

It lives beside the contract (``tasker``) so that the daemon need not import the client.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_ENV = "TASKER_SOCKET"


def default_socket_path() -> Path:
    """``$XDG_RUNTIME_DIR/tasker/taskerd.sock``, else ``/tmp/tasker-$UID/taskerd.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "tasker" if runtime else Path(f"/tmp/tasker-{os.getuid()}")
    return base / "taskerd.sock"


def client_socket_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The socket a client should use: ``explicit``, else ``$TASKER_SOCKET``, else the default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(SOCKET_ENV)
    return Path(env) if env else default_socket_path()

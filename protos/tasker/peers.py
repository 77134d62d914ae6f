"""Who is at the other end of taskerd's Unix socket: the side door both ends share.

grpc's Python server tells a handler nothing of a Unix-socket caller (no ``SO_PEERCRED``,
grpc/grpc#15511). So a client that wants its tasks to record its user connects to
:func:`peer_path` beside the socket, sends a random nonce and a newline, and keeps that
connection open; taskerd reads the connection's ``SO_PEERCRED`` (which the kernel fills in, so
it cannot be forged) and, while the connection stays open, takes a call that carries
``KEY: NONCE`` in its metadata as that user's. A call without it (any other client) is
recorded as from the socket alone ("").
"""

from __future__ import annotations

import os
from pathlib import Path

#: The metadata key that carries the nonce.
KEY = "tasker-peer"
#: A nonce's length range, in characters of ``secrets.token_urlsafe``.
NONCE_MIN, NONCE_MAX = 16, 64


def peer_path(socket: str | os.PathLike[str]) -> Path:
    """The side door's Unix socket: ``<socket>.peer``."""
    return Path(f"{os.fspath(socket)}.peer")

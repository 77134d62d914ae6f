"""The Unix socket's side door (see :mod:`tasker.peers`): who a Unix-socket caller is.

taskerd serves it beside its socket, with the same mode and group. Each connection sends a
nonce line; taskerd reads the connection's ``SO_PEERCRED`` and, until the connection closes,
maps the nonce to ``unix:USER`` (``unix:UID`` for a uid without a name), which a task submitted
with that nonce records as ``submitted_by``. The kernel fills in the credentials, so no client
can claim another's user; a nonce is 16 to 64 random characters, never reused while open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pwd
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from tasker.peers import KEY, NONCE_MAX, NONCE_MIN

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_HELLO_TIMEOUT = 5.0
_LATE = 0.05  # how long a call waits for its nonce to arrive on the side door


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str:
    """``unix:NAME`` of a uid (``unix:UID`` when it has no name); remembered, since a lookup
    may ask a directory service and this runs on the event loop."""
    try:
        return "unix:" + pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"unix:{uid}"


class Peers:
    """The side door's server, and the nonces of its open connections."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.path: Path | None = None

    async def start(self, path: Path) -> None:
        """Serve at ``path`` (a stale socket there is ours: the state directory is locked)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._greet, path=str(path), limit=256)
        self.path = path

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonce = ""
        try:
            sock = writer.get_extra_info("socket")
            _, uid, _ = _CREDS.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
            )
            line = await asyncio.wait_for(reader.readline(), _HELLO_TIMEOUT)
            word = line.decode("ascii", "replace").strip()
            if not NONCE_MIN <= len(word) <= NONCE_MAX or word in self._names:
                return
            nonce = word
            self._names[nonce] = user_name(uid)
            self._arrived.set()
            self._arrived = asyncio.Event()
            while await reader.read(256):  # until the client closes it
                pass
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            if nonce:
                self._names.pop(nonce, None)
            writer.close()

    async def name(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """``unix:USER`` of the call's nonce, or "" (no nonce, or not one of an open door).

        A nonce a client sent just before the call may not be read yet: a call that carries an
        unknown one waits up to 50 ms for it.
        """
        nonce = next((v for k, v in metadata or () if k == KEY and isinstance(v, str)), None)
        if nonce is None:
            return ""
        name = self._names.get(nonce)
        if name is None and self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LATE):
                    while (name := self._names.get(nonce)) is None:
                        await self._arrived.wait()
        return name or ""

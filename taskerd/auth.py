"""Who may call what on a TCP listener: bearer tokens, their roles, and the gRPC interceptor.

The tokens file (config ``tokens_file``) holds one token a line, ``NAME ROLE TOKEN``; blank
lines and ``#`` comments are skipped. It must belong to the daemon's user and be readable by
no one else (mode 0600): the daemon refuses to start otherwise. SIGHUP reads it again.

A call on a TCP listener sends ``authorization: Bearer TOKEN``. Health checks need none; any
other call without a known token is UNAUTHENTICATED, and one whose role may not use the verb
is PERMISSION_DENIED. The Unix socket is not intercepted: its callers are :data:`UNIX`.
Tokens are kept as SHA-256 digests, compared in constant time, and never logged.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc

log = logging.getLogger("taskerd")

ROLES = ("read", "submit", "admin")
#: What each role may call of ``tasker.v1.Tasker`` (admin: everything).
_READ = frozenset(
    ("Get", "List", "Stats", "Metrics", "StreamResults", "ListGroups", "ListSchedules")
)
VERBS: dict[str, frozenset[str] | None] = {
    "read": _READ,
    "submit": _READ | {"Submit", "Run", "Cancel"},
    "admin": None,
}
_TASKER = "/tasker.v1.Tasker/"
_OPEN = "/grpc.health.v1.Health/"  # load balancers probe it without a token
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_TOKEN = 16  # characters: shorter tokens are refused
_SCHEME = "bearer "


class Caller(NamedTuple):
    """Who makes the current call: a token's name and role, or the Unix socket's caller."""

    name: str  # "" over the Unix socket
    role: str


#: Callers on the Unix socket: the socket's mode decides who they may be; they may do all.
UNIX = Caller("", "admin")
#: The caller of the RPC being handled (set by :class:`Authenticator` on TCP listeners).
caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=UNIX)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of a tokens file, as digests with their callers."""

    entries: tuple[tuple[bytes, Caller], ...]

    def find(self, token: str) -> Caller | None:
        """The caller whose token this is, or None. Every entry is compared, in constant time."""
        digest = _digest(token)
        found = None
        for known, who in self.entries:
            if hmac.compare_digest(known, digest):
                found = who
        return found


def load_tokens(path: str | os.PathLike[str]) -> Tokens:
    """Read a tokens file; ``ValueError`` names the file and line, never a token."""
    where = Path(path)
    try:
        info = os.stat(where)
    except OSError as exc:
        raise ValueError(f"tokens_file {where}: {exc.strerror}") from None
    if info.st_uid != os.getuid():
        raise ValueError(f"tokens_file {where}: belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ValueError(
            f"tokens_file {where}: mode {stat.S_IMODE(info.st_mode):04o} lets others read it; "
            "it must be 0600 (chmod 600)"
        )
    entries: list[tuple[bytes, Caller]] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, line in enumerate(where.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        at = f"tokens_file {where}, line {number}"
        if len(fields) != 3:
            raise ValueError(f"{at}: expected NAME ROLE TOKEN")
        name, role, token = fields
        if not _NAME.fullmatch(name):
            raise ValueError(f"{at}: a name is 1 to 64 letters, digits, '_', '.', '@' or '-'")
        if role not in VERBS:
            raise ValueError(f"{at}: role must be one of {', '.join(ROLES)}")
        if len(token) < MIN_TOKEN:
            raise ValueError(f"{at}: the token is shorter than {MIN_TOKEN} characters")
        digest = _digest(token)
        if name in names or digest in digests:
            raise ValueError(f"{at}: the name or the token is already in the file")
        names.add(name)
        digests.add(digest)
        entries.append((digest, Caller(name, role)))
    return Tokens(tuple(entries))


def may(who: Caller, method: str) -> bool:
    """Whether ``who`` may call the full ``method`` name ("/tasker.v1.Tasker/Submit")."""
    verbs = VERBS[who.role]
    if verbs is None:
        return True
    if method.startswith(_TASKER):
        return method[len(_TASKER) :] in verbs
    return method.startswith("/grpc.reflection.")  # any token may read the schema


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            if value[: len(_SCHEME)].lower() == _SCHEME:
                return value[len(_SCHEME) :].strip()
            return None
    return None


def _refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of ``handler``'s kind that answers ``code`` without calling it."""

    async def unary(request: Any, context: Any) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - unreachable: abort raises

    return handler._replace(
        unary_unary=unary if handler.unary_unary else None,
        stream_unary=unary if handler.stream_unary else None,
        unary_stream=stream if handler.unary_stream else None,
        stream_stream=stream if handler.stream_stream else None,
    )


def _as(who: Caller, handler: Any) -> Any:
    """``handler``, its behaviour run with :data:`caller` set to ``who``."""

    def unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: Any) -> Any:
            caller.set(who)  # the call runs in a task of its own: this ends with it
            return await behaviour(request, context)

        return run

    def stream(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: Any) -> AsyncIterator[Any]:
            caller.set(who)
            async for item in behaviour(request, context):
                yield item

        return run

    return handler._replace(
        unary_unary=handler.unary_unary and unary(handler.unary_unary),
        stream_unary=handler.stream_unary and unary(handler.stream_unary),
        unary_stream=handler.unary_stream and stream(handler.unary_stream),
        stream_stream=handler.stream_stream and stream(handler.stream_stream),
    )


class Authenticator(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Checks each call's token and role on a TCP listener (see the module's docstring)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        """Let the call through as its token's caller, or refuse it."""
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_OPEN):
            return handler
        token = _bearer(details.invocation_metadata)
        who = self.tokens.find(token) if token else None
        if who is None:
            log.warning("refused %s: %s", method, "an unknown token" if token else "no token")
            return _refusal(
                handler, grpc.StatusCode.UNAUTHENTICATED,
                "a token is needed: send 'authorization: Bearer TOKEN' (taskerctl --token-file)"
                if token is None else "unknown token",
            )  # fmt: skip
        if not may(who, method):
            verb = method.rpartition("/")[2]
            log.warning("refused %s to %s (role %s)", verb, who.name, who.role)
            return _refusal(
                handler, grpc.StatusCode.PERMISSION_DENIED,
                f"token {who.name!r} has role {who.role}, which may not call {verb}",
            )  # fmt: skip
        return _as(who, handler)

"""Process plumbing for the runner: child watcher, subreaper, run tokens, escapee kills, reaping.

Nothing here spawns anything; :mod:`taskerd.runner` does, and registers what it spawned so the
reaper never steals an exit status from it (or from asyncio's own child watcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import secrets
import signal
import sys
import warnings

TOKEN_VAR = "TASKER_RUN_TOKEN"
"""Environment variable carrying each run's unique token (how escaped descendants are found)."""

_PR_SET_CHILD_SUBREAPER = 36

_token_prefix = secrets.token_hex(6)
_token_counter = itertools.count(1)

# Pids run_command spawned and has not reaped yet: the orphan reaper must leave them alone.
spawned: set[int] = set()
# Tokens of runs still going: their adopted descendants are part of a live task.
live_tokens: set[str] = set()


def new_token() -> str:
    """Return a token unique to one run (random per daemon process, then a counter)."""
    return f"{_token_prefix}-{next(_token_counter)}"


def pidfd_supported() -> bool:
    """True when ``os.pidfd_open`` exists and the kernel allows it."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


def install_child_watcher() -> None:
    """Make asyncio wait for children with a pidfd watcher (Python 3.11 only; no-op on 3.12+).

    On 3.11 the default ``ThreadedChildWatcher`` spends a thread per child;
    ``PidfdChildWatcher`` is about 25% faster for short tasks. Call it either before
    ``asyncio.run`` (the loop attaches when it is set as the event loop) or from inside the running
    loop (the watcher is attached to it at once). Idempotent; does nothing without pidfd support.
    """
    if sys.version_info >= (3, 12) or not pidfd_supported():
        return
    policy = asyncio.get_event_loop_policy()
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    current = getattr(policy, "_watcher", None)
    if isinstance(current, asyncio.PidfdChildWatcher):
        if loop is not None and getattr(current, "_loop", None) is not loop:
            current.attach_loop(loop)
        return
    watcher = asyncio.PidfdChildWatcher()
    if loop is not None:
        watcher.attach_loop(loop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy.set_child_watcher(watcher)


def set_subreaper(enabled: bool) -> bool:
    """Set or clear PR_SET_CHILD_SUBREAPER on this process; True if the kernel accepted it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Make this process a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER, 1)``).

    Descendants that escape their task (double fork, ``setsid``) are then reparented here rather
    than to init, so they can be found, killed and reaped. True if it worked.
    """
    return set_subreaper(True)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``, ignoring an empty or foreign group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """True while process group ``pgid`` has a live (non-zombie) member.

    ``killpg(pgid, 0)`` alone also counts zombies, which an init that reaps slowly (or nobody)
    can keep around; so when it says yes, /proc is checked (cancel path only).
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for name in os.listdir("/proc"):
        if name.isdigit():
            data = _read(f"/proc/{name}/stat")
            fields = data[data.rfind(b")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _env_token(pid: int) -> str | None:
    """The run token in ``/proc/<pid>/environ``, if any."""
    data = b"\0" + _read(f"/proc/{pid}/environ")
    key = b"\0" + TOKEN_VAR.encode() + b"="
    at = data.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else None].decode(errors="replace")


def kill_token(token: str, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every process whose environment carries ``token``; return their pids.

    Scans /proc, so it is for the rare paths (cancel, timeout, a finished run whose pipes are
    still held open), never for a normal fast exit.
    """
    me = os.getpid()
    hit: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        if _env_token(pid) == token:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                hit.append(pid)
    return hit


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of ``pid`` from /proc, or None if it is gone."""
    data = _read(f"/proc/{pid}/stat")
    close = data.rfind(b")")
    if close < 0:
        return None
    fields = data[close + 2 :].split()
    # After "pid (comm)": state ppid pgrp session ...
    return fields[0].decode(), int(fields[3])


def children() -> set[int]:
    """Pids of this process's direct children (including adopted orphans)."""
    me = os.getpid()
    kids: set[int] = set()
    if os.path.exists(f"/proc/{me}/task/{me}/children"):
        for tid in os.listdir(f"/proc/{me}/task"):
            kids.update(int(p) for p in _read(f"/proc/{me}/task/{tid}/children").split())
        return kids
    # Kernel without CONFIG_PROC_CHILDREN: scan every stat for our pid as parent.
    for name in os.listdir("/proc"):
        if name.isdigit():
            data = _read(f"/proc/{name}/stat")
            close = data.rfind(b")")
            if close >= 0 and int(data[close + 2 :].split()[1]) == me:
                kids.add(int(name))
    return kids


def _asyncio_children() -> set[int]:
    """Pids asyncio's child watcher is still waiting for (best effort: 3.11 watchers)."""
    watcher = getattr(asyncio.get_event_loop_policy(), "_watcher", None)
    pids: set[int] = set()
    for attr in ("_callbacks", "_threads"):
        table = getattr(watcher, attr, None)
        if isinstance(table, dict):
            pids.update(p for p in table if isinstance(p, int))
    return pids


def reap_orphans() -> int:
    """Reap adopted orphans; kill adopted leftovers of finished runs. Returns how many reaped.

    Only children that nobody else waits for are touched: never ``waitpid(-1)``; pids spawned by
    the runner, pids asyncio's child watcher knows, and children in this process's own session
    (spawned by anything else in the daemon) are skipped. Task processes run in sessions of their
    own, so adopted orphans are never in ours.
    """
    own_sid = os.getsid(0)
    skip = spawned | _asyncio_children()
    reaped = 0
    for pid in children() - skip:
        st = _stat(pid)
        if st is None or st[1] == own_sid:
            continue
        state, _sid = st
        if state in ("Z", "X"):
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                reaped += done == pid
        else:
            token = _env_token(pid)
            if token is not None and token not in live_tokens:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    return reaped


async def reap_orphans_forever(interval: float = 1.0) -> None:
    """Run :func:`reap_orphans` every ``interval`` seconds until cancelled (the daemon's task)."""
    while True:
        reap_orphans()
        await asyncio.sleep(interval)

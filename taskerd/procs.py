"""Process plumbing for the runner: child watcher, subreaper, run tokens and cgroups, signalling
a run's processes once each, reaping, and ending what a crashed daemon left running.

Nothing here spawns anything; :mod:`taskerd.runner` does, and registers what it spawned so the
reaper never steals an exit status from it (or from asyncio's own child watcher).

A run's token is ``<state key>.<instance>.<n>``: the state key is a hash of the daemon's state
directory, the instance is random per daemon start. So the next daemon on the same state
directory can tell its predecessor's processes (:func:`end_previous_runs`) without the journal,
and never touches another daemon's. With cgroups (:func:`configure`), each run also has its own
cgroup v2 directory, ``<daemon's cgroup>/tasker-<state key>/<instance>.<n>``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import hashlib
import itertools
import logging
import os
import secrets
import select
import signal
import sys
import warnings
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from taskerd import cgroups as cgv2

log = logging.getLogger("taskerd")

TOKEN_VAR = "TASKER_RUN_TOKEN"
"""Environment variable carrying each run's unique token (how escaped descendants are found)."""

_PR_SET_CHILD_SUBREAPER = 36
_START_TIME = 19  # index of /proc/PID/stat field 22 (starttime) after "pid (comm)"

# Until configure(): a random state key, so tokens are unique and match no state directory.
_state_key = secrets.token_hex(6)
_instance = secrets.token_hex(4)
_token_counter = itertools.count(1)
_configured: tuple[str, bool] | None = None
_tree = ""  # this daemon's cgroup subtree; "" when runs get no cgroup
_trees: set[str] = set()  # every subtree configure() opened, for close() to remove
_placer: cgv2.Placer | None = None

# Pids run_command spawned and has not reaped yet: the orphan reaper must leave them alone.
spawned: set[int] = set()
# Tokens of runs still going: their adopted descendants are part of a live task.
live_tokens: set[str] = set()


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What tells a run's processes apart once the daemon that started them is gone."""

    pid: int  # the main process, leader of the run's session and process group
    pgid: int
    start_time: int  # field 22 of /proc/PID/stat: clock ticks since boot
    token: str


def state_key(state_dir: Path) -> str:
    """A short hash of the real path of ``state_dir``: the first part of its daemon's tokens."""
    return hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:12]


def configure(state_dir: Path, *, cgroups: bool) -> None:
    """Tie this daemon's runs to ``state_dir``; call once at start-up, before anything is spawned.

    Tokens then start with :func:`state_key`. With ``cgroups`` and a cgroup v2 tree the daemon may
    write (systemd ``Delegate=yes``, or root), each run gets its own cgroup under
    ``tasker-<state key>`` next to the daemon; otherwise (logged) runs are found by process group
    and token only. Idempotent: a call with the same arguments changes nothing. Without it
    (engine-only use) runs get random-prefixed tokens and no cgroup.
    """
    global _state_key, _configured, _tree, _placer
    key = state_key(state_dir)
    if _configured == (key, cgroups):
        return
    if _configured is None:
        atexit.register(close)
    _configured = (key, cgroups)
    _state_key = key
    _tree = ""
    if cgroups:
        try:
            _tree = cgv2.open_subtree(cgv2.SUBTREE_PREFIX + key)
        except OSError as exc:
            log.warning(
                "no cgroup per run (%s): a task's processes are found by process group and "
                "run token only",
                exc.strerror or exc,
            )
    if _tree:
        _trees.add(_tree)
        _placer = _placer or cgv2.Placer(running)
        log.info("each run gets a cgroup under %s", _tree)


def close(timeout: float = 5.0) -> None:
    """Finish pending cgroup removals, then remove this daemon's cgroup subtree if it is empty.

    Registered with ``atexit`` by :func:`configure`; harmless to call again.
    """
    if _placer is not None:
        _placer.close(timeout)
    for tree in _trees:
        with contextlib.suppress(OSError):
            os.rmdir(tree)


def token_prefix() -> str:
    """What every token this daemon instance gives out starts with: ``<state key>.<instance>.``."""
    return f"{_state_key}.{_instance}."


def new_token() -> str:
    """Return a token unique to one run: ``<state key>.<instance>.<n>``."""
    return f"{token_prefix()}{next(_token_counter)}"


def place(pid: int, token: str) -> cgv2.Placement | None:
    """Queue the move of a just-spawned ``pid`` into its run's own cgroup, named after
    ``token``; None without cgroups. Hand the placement to :func:`release` once the process has
    exited, before reaping it: until then the pid is the run's, and the move checks that."""
    if _placer is None or not _tree:
        return None
    return _placer.place(os.path.join(_tree, token.partition(".")[2]), pid)


def release(placement: cgv2.Placement) -> None:
    """Kill what is left in a run's cgroup and remove it, off the event loop. Idempotent."""
    assert _placer is not None
    _placer.release(placement)


def start_time(pid: int) -> int:
    """Field 22 of ``/proc/PID/stat`` (start time, clock ticks since boot); 0 if ``pid`` is gone."""
    fields = _stat(pid)
    return int(fields[_START_TIME]) if fields else 0


def running(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (is not a zombie)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] not in _DEAD


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
    for pid in _pids():
        fields = _stat(pid)
        if fields and int(fields[2]) == pgid and fields[0] not in _DEAD:
            return True
    return False


_DEAD = (b"Z", b"X")


def _pids() -> list[int]:
    """Every pid in /proc but this process's."""
    me = os.getpid()
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != me]


def _stat(pid: int) -> list[bytes]:
    """Fields of ``/proc/PID/stat`` after "pid (comm)": state ppid pgrp session ...; [] if gone."""
    data = cgv2.read_file(f"/proc/{pid}/stat")
    close = data.rfind(b")")
    return data[close + 2 :].split() if close >= 0 else []


def _env_token(pid: int) -> str | None:
    """The run token in ``/proc/<pid>/environ``, if any."""
    data = b"\0" + cgv2.read_file(f"/proc/{pid}/environ")
    key = b"\0" + TOKEN_VAR.encode() + b"="
    at = data.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = data.find(b"\0", start)
    return data[start : end if end >= 0 else None].decode(errors="replace")


def kill_token(
    token: str, sig: int = signal.SIGKILL, *, pgid: int = 0, skip: Collection[int] = ()
) -> list[int]:
    """Send ``sig`` to every process whose environment carries ``token``; return their pids.

    Leaves out pids in ``skip`` and members of process group ``pgid`` (when given): those were
    signalled already. Scans /proc, so it is for the rare paths (cancel, timeout, a finished run
    whose pipes are still held open), never for a normal fast exit.
    """
    hit: list[int] = []
    for pid in _pids():
        if pid in skip or _env_token(pid) != token:
            continue
        if pgid and (fields := _stat(pid)) and int(fields[2]) == pgid:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            hit.append(pid)
    return hit


def signal_run(pgid: int, token: str, sig: int, cgroup: str = "") -> list[int]:
    """Send ``sig`` once to each process of a run; return the pids found by token.

    With a ``cgroup``: its members one by one (SIGKILL: ``cgroup.kill``), then each other process
    carrying ``token``. Without: process group ``pgid`` with one ``killpg``, then each process
    outside it carrying ``token``. A process that cleared its environment and left the session is
    found only with a cgroup.

    Either way the group goes first, with one ``killpg``: signalled one by one, a shell's children
    could die before it, and its ``wait`` return, so that it exits 0 before its own signal lands.
    """
    if sig == signal.SIGKILL and cgroup:
        cgv2.kill(cgroup)
    if not cgroup or sig == signal.SIGKILL:
        signal_group(pgid, sig)
        return kill_token(token, sig, pgid=pgid)
    before = cgv2.members(cgroup)
    signal_group(pgid, sig)
    hit = {pid for pid in before if (fields := _stat(pid)) and int(fields[2]) == pgid}
    return kill_token(token, sig, skip=cgv2.signal_members(cgroup, sig, hit))


def children() -> set[int]:
    """Pids of this process's direct children (including adopted orphans)."""
    me = os.getpid()
    kids: set[int] = set()
    if os.path.exists(f"/proc/{me}/task/{me}/children"):
        for tid in os.listdir(f"/proc/{me}/task"):
            kids.update(int(p) for p in cgv2.read_file(f"/proc/{me}/task/{tid}/children").split())
        return kids
    # Kernel without CONFIG_PROC_CHILDREN: scan every stat for our pid as parent.
    for pid in _pids():
        fields = _stat(pid)
        if fields and int(fields[1]) == me:
            kids.add(pid)
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
        fields = _stat(pid)
        if not fields or int(fields[3]) == own_sid:
            continue
        if fields[0] in _DEAD:
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


async def end_previous_runs(runs: Iterable[RunIdentity], grace: float) -> int:
    """End every process left by earlier daemon instances on this state directory.

    For the daemon's recovery, after :func:`configure` and before anything is re-queued. Targets:
    the members of leftover run cgroups under this state directory's subtree (those not of the
    current instance), every process whose token has this state directory's key but not the
    current instance, and the process group of each of ``runs`` (journaled) whose leader still
    has its start time or whose members include one carrying its token (so a reused pid is never
    hit). Each gets SIGTERM once (and SIGCONT, so that a paused one takes it); after up to
    ``grace`` seconds (zombies count as gone: nobody may reap them) what is left gets SIGKILL,
    and so does any process of theirs that turned up meanwhile. Signals go through pidfds, so a
    pid reused in between is never hit. Leftover cgroups are removed once empty. Returns how many
    processes were signalled.
    """
    runs = list(runs)
    leftovers = _leftover_cgroups()
    loop = asyncio.get_running_loop()
    fds: dict[int, int] = {}  # pid -> pidfd of every process signalled
    try:
        _signal_previous(runs, leftovers, fds, signal.SIGTERM)
        _signal_previous(runs, leftovers, fds, signal.SIGCONT)  # a paused task takes it too
        deadline = loop.time() + grace
        step = 0.005
        while len(_exited(fds)) < len(fds) or any(cgv2.populated(c) for c in leftovers):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(step, remaining))
            step = min(step * 2, 0.1)
        for cgroup in leftovers:
            cgv2.kill(cgroup)
        _signal_previous(runs, leftovers, fds, signal.SIGKILL)
        for _ in range(50):  # SIGKILLed processes die within milliseconds, unless stuck in D state
            if not any(cgv2.populated(c) for c in leftovers):
                break
            await asyncio.sleep(0.02)
    finally:
        for fd in fds.values():
            os.close(fd)
    for cgroup in leftovers:
        if not cgv2.remove(cgroup):
            log.warning("could not remove leftover cgroup %s", cgroup)
    return len(fds)


def _leftover_cgroups() -> list[str]:
    """Run cgroups of earlier instances under this state directory's subtree."""
    try:
        tree = _tree or os.path.join(cgv2.own_cgroup_dir(), cgv2.SUBTREE_PREFIX + _state_key)
    except OSError:
        return []
    current = f"{_instance}."
    return [c for c in cgv2.children(tree) if not os.path.basename(c).startswith(current)]


def _previous_processes(runs: list[RunIdentity], leftovers: list[str]) -> dict[int, int]:
    """Live processes of earlier instances (see :func:`end_previous_runs`): pid -> start time."""
    ours, current = f"{_state_key}.", token_prefix()
    in_cgroups: set[int] = set()
    for cgroup in leftovers:
        in_cgroups |= cgv2.members(cgroup)
    found: dict[int, int] = {}
    started: dict[int, int] = {}
    groups: dict[int, list[int]] = {}
    tokens: dict[int, str | None] = {}
    for pid in _pids():
        fields = _stat(pid)
        if not fields or fields[0] in _DEAD:
            continue
        started[pid] = int(fields[_START_TIME])
        groups.setdefault(int(fields[2]), []).append(pid)
        token = tokens[pid] = _env_token(pid)
        previous = token is not None and token.startswith(ours) and not token.startswith(current)
        if previous or pid in in_cgroups:
            found[pid] = started[pid]
    for run in runs:
        group = groups.get(run.pgid, [])
        if started.get(run.pid) == run.start_time or any(tokens[p] == run.token for p in group):
            found.update((p, started[p]) for p in group)
    return found


#: Signals that :func:`_signal_previous` sends again to processes it signalled before.
_AGAIN = (signal.SIGKILL, signal.SIGCONT)


def _signal_previous(
    runs: list[RunIdentity], leftovers: list[str], fds: dict[int, int], sig: int
) -> None:
    """Send ``sig`` to each process of earlier instances not yet in ``fds`` (adding it); with
    SIGKILL or SIGCONT, also to those in ``fds`` that have not exited."""
    targets = _previous_processes(runs, leftovers)
    exited = _exited(fds)
    again = [pid for pid in fds if pid not in exited] if sig in _AGAIN else []
    for pid, started in targets.items():
        if pid in fds:
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        # The pidfd is for whatever holds the pid now: make sure it is still the process found.
        if start_time(pid) != started:
            os.close(fd)
            continue
        fds[pid] = fd
        again.append(pid)
    for pid in again:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(fds[pid], sig)


def _exited(fds: dict[int, int]) -> set[int]:
    """The pids in ``fds`` whose process has exited (a pidfd is readable then, zombie or not)."""
    if not fds:
        return set()
    poller = select.poll()
    by_fd = {fd: pid for pid, fd in fds.items()}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return {by_fd[fd] for fd, _ in poller.poll(0)}

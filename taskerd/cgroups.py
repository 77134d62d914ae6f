"""Per-run cgroup v2 directories: where this daemon may make them, and how a run uses its own.

Layout: ``<the daemon's own cgroup>/tasker-<state key>/<instance>.<n>``, one directory per run,
named after the run's token without its state key (see :mod:`taskerd.procs`). No controller is
ever enabled (``cgroup.subtree_control`` is never written), so the no-internal-process rule never
applies and the daemon may stay in its own cgroup, above its runs.

A process is moved into its run's cgroup ``PLACE_DELAY`` (20 ms) after ``posix_spawn`` returned,
if it still runs then (a run that ends sooner never gets a cgroup): there is no way to start it
inside (``CLONE_INTO_CGROUP`` needs ``clone3``, which neither Python nor this glibc's
``posix_spawn`` offers). Writing ``cgroup.procs`` takes the kernel's global
``cgroup_threadgroup_rwsem`` for writing, which waits for an RCU grace period whenever the lock
was idle: about 11 ms here. So the moves are done by :class:`Placer`, a thread, never on the event
loop; the run's first processes may fork meanwhile, so after moving the main process the placer
walks its descendants (``/proc/PID/task/*/children``) and moves those too, until none is left out.
A main process that has exited by then is not moved (its pid could have been reused: the placer
checks its start time first); its run, over already, ends without a cgroup.

What this cannot catch: a process that, before the move, both left the session and cleared its
environment, and whose parent already exited (so no walk finds it and no token names it), or
that was started by a main process that exited before the move; and, if the daemon dies within
those first milliseconds, what forked before the move.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("taskerd")

SUBTREE_PREFIX = "tasker-"
"""Name prefix of a daemon's subtree, next to the daemon in its own cgroup."""

_FLAGS = os.O_WRONLY | os.O_CLOEXEC
_RMDIR_RETRY = (0.02, 2.0)  # first and longest wait between tries to remove a busy run cgroup
_TICK = 0.01  # a busy placer thread looks at its queues this often
#: A run is moved into its cgroup this long after its spawn, if it still runs: each move stalls
#: every fork and exit on the machine for up to an RCU grace period, so a short run (most are)
#: is never moved. What it forks meanwhile is moved with it (see :meth:`Placer._move`).
PLACE_DELAY = 0.02


def own_cgroup_dir() -> str:
    """The directory of this process's cgroup in the mounted cgroup2 hierarchy.

    From ``/proc/self/cgroup`` (the ``0::`` line) and the cgroup2 entry of
    ``/proc/self/mountinfo``. Raises OSError saying why when there is none.
    """
    with open("/proc/self/cgroup") as fh:
        own = next((line[3:].rstrip("\n") for line in fh if line.startswith("0::")), None)
    if own is None:
        raise OSError(errno.ENOENT, "not in a cgroup v2 hierarchy")
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            # id parent major:minor root mountpoint options [optional...] - fstype source super
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] != "cgroup2":
                continue
            fields = left.split(" ")
            root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
            if own == root or own.startswith(root.rstrip("/") + "/"):
                return os.path.join(mountpoint, own[len(root) :].lstrip("/")).rstrip("/")
    raise OSError(errno.ENOENT, "no cgroup2 mount holds this process's cgroup")


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def open_subtree(name: str) -> str:
    """Create (or reuse) ``name`` under this process's cgroup; return its path if runs can use it.

    Usable means: writable (systemd ``Delegate=yes``, or root), with ``cgroup.kill`` (Linux 5.14),
    and processes may be moved out of our own cgroup (``cgroup.procs`` there is writable too).
    Raises OSError saying why not.
    """
    own = own_cgroup_dir()
    if not os.access(os.path.join(own, "cgroup.procs"), os.W_OK):
        raise OSError(errno.EACCES, f"{own}/cgroup.procs is not writable")
    path = os.path.join(own, name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    if not os.path.exists(os.path.join(path, "cgroup.kill")):
        raise OSError(errno.ENOTSUP, "cgroup.kill is missing (Linux 5.14+ needed)")
    if not os.access(os.path.join(path, "cgroup.procs"), os.W_OK) or not os.access(path, os.W_OK):
        raise OSError(errno.EACCES, f"{path} is not writable")
    return path


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, _FLAGS)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    """A small kernel file's content (/proc, cgroupfs); empty if it cannot be read.

    Plain system calls, no file object: it is read on every spawn (a third of the cost).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        parts = []
        while chunk := os.read(fd, 65536):
            parts.append(chunk)
        return b"".join(parts)
    except OSError:
        return b""
    finally:
        os.close(fd)


def members(path: str) -> set[int]:
    """Pids in the cgroup at ``path`` and its descendants (none if it is gone)."""
    pids = {int(p) for p in read_file(os.path.join(path, "cgroup.procs")).split()}
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pids |= members(entry.path)
    return pids


def populated(path: str) -> bool:
    """True while a live process is in the cgroup or below it (zombies do not count)."""
    return b"populated 1" in read_file(os.path.join(path, "cgroup.events"))


def signal_members(path: str, sig: int, done: set[int] | None = None) -> set[int]:
    """Send ``sig`` once to every process of the cgroup; return the pids signalled (``done``).

    Members are re-read until no new one turns up, so a process forked by a member while this
    runs is signalled too; pids already in ``done`` are skipped.
    """
    done = set() if done is None else done
    for _ in range(8):
        new = members(path) - done
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        done |= new
    return done


def kill(path: str) -> None:
    """SIGKILL everything in the cgroup and below, at once (``cgroup.kill``); no-op if gone."""
    with contextlib.suppress(FileNotFoundError):
        _write(os.path.join(path, "cgroup.kill"), b"1")


def remove(path: str) -> bool:
    """Remove the cgroup and any child cgroups, deepest first; True if it is gone."""
    for _ in range(2):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return True
        except OSError as exc:  # EBUSY: populated, or it has child cgroups (rare: remove those)
            if exc.errno != errno.EBUSY or not all([remove(c) for c in children(path)]):
                return False
        else:
            return True
    return False


def children(path: str) -> list[str]:
    """Paths of the cgroups directly under ``path`` (none if it is gone)."""
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    """Pids of ``pid``'s children and theirs, from ``/proc/PID/task/*/children``."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            kids = [int(k) for k in read_file(f"/proc/{parent}/task/{tid}/children").split()]
            found += kids
            todo += kids
    return found


def move(path: str, pid: int) -> None:
    """Move ``pid`` into the cgroup at ``path`` (creating it), then any of its descendants that
    forked before the move (they stay behind otherwise); until none is left out."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    procs = os.path.join(path, "cgroup.procs")
    try:
        _write(procs, b"%d" % pid)
    except ProcessLookupError:
        return
    for _ in range(8):
        outside = _descendants(pid)
        if outside:
            inside = members(path)
            outside = [p for p in outside if p not in inside]
        if not outside:
            return
        for child in outside:
            with contextlib.suppress(ProcessLookupError):
                _write(procs, b"%d" % child)


class Placement:
    """One run's cgroup as the :class:`Placer` handles it."""

    __slots__ = ("created", "done", "due", "path", "pid", "released")

    def __init__(self, path: str, pid: int, due: float = 0.0) -> None:
        self.path = path
        self.pid = pid
        self.due = due  # when the move is made (time.monotonic()), if the run still runs
        self.done = False  # nothing more will be moved: moved, or skipped (placer thread)
        self.created = False  # the directory was made (placer thread)
        self.released = False  # release() was called (event loop)


class Placer:
    """A thread that creates run cgroups, moves processes into them, and kills and removes them.

    The event loop only queues work, and wakes the thread only when it was idle: a busy thread
    looks at its queues every ``_TICK`` seconds, so spawning costs the loop no thread hand-off.
    Every cgroup write happens here, since one can block for a grace period.
    ``running(pid)`` tells whether the run's main process still runs. A run released (its main
    process exited; it is reaped only after the release, so until then the pid is the run's) or
    gone is not moved, and ends without a cgroup.
    """

    def __init__(self, running: Callable[[int], bool]) -> None:
        self._running = running
        self._moves: collections.deque[Placement] = collections.deque()
        self._releases: collections.deque[Placement] = collections.deque()
        self._busy: list[tuple[float, float, Placement]] = []  # (next try, wait, run) to remove
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._idle = False
        self._closing = False
        self._warned = False

    def place(self, path: str, pid: int) -> Placement:
        """Queue the move of ``pid`` (and any early descendants) into a new cgroup at ``path``,
        made ``PLACE_DELAY`` after the spawn if the run still runs then."""
        placement = Placement(path, pid, time.monotonic() + PLACE_DELAY)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cgroups", daemon=True)
            self._thread.start()
        self._moves.append(placement)
        if self._idle:
            self._wake.set()
        return placement

    def release(self, placement: Placement) -> None:
        """Queue the end of a run's cgroup, once its main process has exited: kill what is left
        in it, then remove it. Idempotent."""
        if not placement.released:
            placement.released = True
            self._releases.append(placement)
            if self._idle:
                self._wake.set()

    def close(self, timeout: float) -> None:
        """Finish the queued work and, for up to ``timeout`` seconds, the pending removals."""
        if self._thread is None:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None
        self._closing = False  # a later place() starts a new thread

    # -- the thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: collections.deque[Placement] = collections.deque()  # moves not due yet
        while True:
            closing = self._closing
            if not (pending or self._moves or self._releases or self._busy):
                if closing:
                    return
                self._idle = True  # then look again: a queue filled meanwhile wakes nobody
                if not (self._moves or self._releases or self._closing):
                    self._wake.wait()
                self._wake.clear()
                self._idle = False
            else:
                time.sleep(_TICK)
            while self._moves:
                pending.append(self._moves.popleft())
            # Releases first: a run that ended before its move is due is never moved.
            while self._releases:
                self._guarded(self._release, self._releases.popleft())
            now = time.monotonic()
            while pending and (closing or pending[0].due <= now):
                self._guarded(self._move, pending.popleft())
            if self._busy:
                self._retry_busy()

    def _guarded(self, job: Callable[[Placement], None], placement: Placement) -> None:
        try:
            job(placement)
        except Exception:  # never let one run's trouble stop the thread
            log.exception("cgroup %s", placement.path)

    def _move(self, placement: Placement) -> None:
        if placement.done:  # released before its turn came: the run is over
            return
        placement.done = True
        # Not released: its main process is not reaped yet, so the pid is still the run's.
        if placement.released or not self._running(placement.pid):
            return
        try:
            move(placement.path, placement.pid)
            placement.created = True
        except OSError as exc:
            placement.created = os.path.isdir(placement.path)
            if not self._warned:  # once: the same cause would repeat for every run
                self._warned = True
                log.warning("could not move a run into its cgroup %s: %s", placement.path, exc)

    def _release(self, placement: Placement) -> None:
        placement.done = True
        if not placement.created or remove(placement.path):  # mostly empty already
            return
        kill(placement.path)
        if not remove(placement.path):
            self._busy.append((time.monotonic() + _RMDIR_RETRY[0], _RMDIR_RETRY[0], placement))
            self._busy.sort(key=lambda item: item[0])

    def _retry_busy(self) -> None:
        now = time.monotonic()
        keep: list[tuple[float, float, Placement]] = []
        for when, wait, placement in self._busy:
            if when > now:
                keep.append((when, wait, placement))
            elif not remove(placement.path):
                kill(placement.path)
                wait = min(wait * 2, _RMDIR_RETRY[1])
                keep.append((now + wait, wait, placement))
        self._busy = sorted(keep, key=lambda item: item[0])

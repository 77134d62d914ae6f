"""Run one command as a subprocess: capture its output live, end it cleanly, leave nothing behind.

Knows nothing of gRPC, SQLite or the engine. How a run goes:

* Spawn with ``os.posix_spawn(..., setsid=True)``; for a ``cwd`` (Python 3.11's posix_spawn has
  no chdir) the loop thread steps into it around the spawn, not to pay ``subprocess.Popen``'s cost.
  Every run is a new session, so its process group is the task. Measured on this machine,
  posix_spawn costs the daemon ~115 us of CPU per spawn against ~270 us for ``Popen`` and ~700 us
  for asyncio's ``create_subprocess_exec`` with pipes and a new session.
* Its end is seen through a pidfd on the event loop, and its pipes are read with plain
  ``loop.add_reader`` callbacks: no transports, no extra tasks, no threads.
* With cgroups (:func:`taskerd.procs.configure`), the main process is moved into a cgroup of the
  run's own right after the spawn, by a thread (see :mod:`taskerd.cgroups`): whatever it starts,
  even a descendant that clears its environment and leaves the session, stays in it. Without
  ``configure`` (a Dask worker: :mod:`taskerd.dask.worker`), runs get no cgroup and tokens with
  a random prefix: their process group and token find them.
* When the main process exits, the rest of its group is SIGKILLed (while the zombie leader still
  pins the group id) and so is its cgroup (``cgroup.kill``, then the cgroup is removed), the pipes
  are drained, and only if something else still holds them is /proc scanned for the run's
  ``TASKER_RUN_TOKEN`` to kill escapees.
* When the coroutine is cancelled (the engine's timeouts and cancels), every process of the run
  gets SIGTERM once (each member of its cgroup, or its group with one ``killpg``; then any other
  process carrying its token), then SIGKILL after ``kill_grace`` (or at once on a second cancel);
  the main process is reaped and ``CancelledError`` re-raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tasker.durations import format_duration
from taskerd import cgroups, procs
from taskerd.cgroups import Placement
from taskerd.procs import (
    TOKEN_VAR,
    RunIdentity,
    become_subreaper,
    install_child_watcher,
    reap_orphans,
    reap_orphans_forever,
)

__all__ = [
    "STDERR",
    "STDOUT",
    "TOKEN_VAR",
    "Capture",
    "Exit",
    "HookError",
    "SpawnError",
    "Spawned",
    "become_subreaper",
    "install_child_watcher",
    "reap_orphans",
    "reap_orphans_forever",
    "run_command",
    "run_hook",
    "task_environment",
]

STDOUT = 1
STDERR = 2
CHUNK = 64 * 1024
HOOK_KILL_GRACE = 1.0
HOOK_OUTPUT_LIMIT = 1 << 20

_WATCH_DELAY = 0.005  # how long a run goes before its pipes are watched (read at exit until then)
_SYNC_DRAIN_MAX = 1 << 20  # bytes read per stream before yielding when draining at exit
_LEFTOVER_WAIT = 0.25  # after the group SIGKILL, how long its dying members may hold the pipes
_ESCAPEE_WAIT = 1.0  # after killing escapees, how long before the pipes are abandoned
_EXIT_WAIT = 5.0  # after SIGKILL, how long to wait for the main process before giving up
_PLACE_WAIT = 2.0  # on cancel, how long the move into the run's cgroup may still take
_SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ)  # ignored by Python; restored for the child
_devnull = -1


class Capture:
    """Captured output of one run.

    stdout/stderr are kept up to ``limit`` bytes each; past it the rest is dropped and the
    stream's truncated flag set. Every chunk is also passed live to ``on_chunk(stream, data)``
    (stream 1 = stdout, 2 = stderr), including chunks past the limit. ``exit`` is set when the
    run ends, also when it ends by cancellation (where ``run_command`` raises instead).
    """

    __slots__ = (
        "exit",
        "limit",
        "on_chunk",
        "stderr",
        "stderr_truncated",
        "stdout",
        "stdout_truncated",
    )

    def __init__(self, limit: int, on_chunk: Callable[[int, bytes], None] | None = None) -> None:
        self.limit = limit
        self.on_chunk = on_chunk
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stdout_truncated = False
        self.stderr_truncated = False
        self.exit: Exit | None = None

    def feed(self, stream: int, data: bytes) -> None:
        """Record one chunk of ``stream`` (1 or 2) and hand it to ``on_chunk``."""
        buf = self.stdout if stream == STDOUT else self.stderr
        room = self.limit - len(buf)
        if len(data) <= room:
            buf += data
        else:
            if room > 0:
                buf += data[:room]
            if stream == STDOUT:
                self.stdout_truncated = True
            else:
                self.stderr_truncated = True
        if self.on_chunk is not None:
            self.on_chunk(stream, data)


@dataclass(frozen=True, slots=True)
class Exit:
    """How a run's main process ended."""

    pid: int
    exit_code: int | None  # set when it exited
    signal: int | None  # set when a signal killed it
    killed_by_us: bool  # we sent that signal (cancel/timeout)


@dataclass(slots=True)
class Spawned:
    """A run's main process, as ``on_spawn`` gets it right after the spawn."""

    pid: int
    pgid: int  # the run's process group (and session): the pid itself
    token: str  # the run's TASKER_RUN_TOKEN
    cgroup: str  # the run's own cgroup directory; "" without cgroups
    _start_time: int = -1
    #: The Dask worker it runs on ("": here). A remote run's pid is the worker host's, and its
    #: pgid 0: nothing here may signal it (see :mod:`taskerd.dask.executor`).
    node: str = ""

    @property
    def start_time(self) -> int:
        """Field 22 of /proc/PID/stat, clock ticks since boot (0 if already gone).

        Read on first use, not at the spawn: reading a process's /proc files while it execs
        costs the loop about 0.2 ms, a fifth of a short task, and most tasks never need it.
        """
        if self._start_time < 0:
            self._start_time = procs.start_time(self.pid)
        return self._start_time

    def to_identity(self) -> RunIdentity:
        """What finds this run's processes again after a daemon crash."""
        return RunIdentity(self.pid, self.pgid, self.start_time, self.token)


class SpawnError(Exception):
    """The command could not be started.

    ``str()`` is a sentence such as ``spawn failed: foo: No such file or directory`` (also for a
    missing or unusable ``cwd``).
    """


class HookError(Exception):
    """A worker hook failed: non-zero exit or timeout. ``str()`` is stderr's last line if any."""

    def __init__(self, message: str, *, exit: Exit | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.exit = exit
        self.stderr = stderr


def _devnull_fd() -> int:
    global _devnull
    if _devnull < 0:
        _devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull


_WHICH_TTL = 1.0
_which_cache: dict[tuple[str, str], tuple[float, str]] = {}


def _resolve(name: str, env: Mapping[str, str]) -> str:
    """Find ``name`` in the task's own PATH (as execvpe would), or raise FileNotFoundError.

    A hit is remembered for a second: a PATH walk is several stat calls, and a burst of tasks
    runs the same few commands.
    """
    if "/" in name:
        return name
    path = env.get("PATH", os.defpath)
    now = time.monotonic()
    cached = _which_cache.get((name, path))
    if cached is not None and now - cached[0] < _WHICH_TTL:
        return cached[1]
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    if len(_which_cache) > 1024:
        _which_cache.clear()
    _which_cache[(name, path)] = (now, found)
    return found


_home = -1  # the daemon's own working directory (an fd), to come back to after a spawn


def _home_fd() -> int:
    global _home
    if _home < 0:
        _home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return _home


def _spawn(
    path: str, args: list[str], env: dict[str, str], cwd: str | None, stdin: bytes
) -> tuple[int, int, int, int]:
    """Start the process in a new session; return (pid, stdout_r, stderr_r, stdin_w or -1)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if stdin else (_devnull_fd(), -1)
    try:
        home = -1
        if cwd is not None:
            # Python 3.11's posix_spawn cannot chdir: the daemon steps into ``cwd`` for the
            # spawn and back out. Only this (loop) thread spawns, and every path the daemon's
            # other threads use is absolute, so the moment it spends there is harmless.
            home = _home_fd()
            os.chdir(cwd)
        try:
            pid = os.posix_spawn(
                path,
                args,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, in_r, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setsid=True,
                setsigdef=_SIGDEF,
                setsigmask=(),
            )
        finally:
            if home >= 0:
                os.fchdir(home)
    except BaseException:
        for fd in (out_r, err_r, in_w):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
        if stdin:
            os.close(in_r)
    return pid, out_r, err_r, in_w


class _Run:
    """One started process: its pipes and pidfd, wired to the loop with plain callbacks."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        token: str,
        capture: Capture,
        out_fd: int,
        err_fd: int,
        in_fd: int,
        stdin: bytes,
    ) -> None:
        self.loop = loop
        self.pid = pid
        self.token = token
        self.placement: Placement | None = None
        self.capture = capture
        self.status: int | None = None  # wait status once reaped
        self.terminating = False
        self.signalled: set[int] = set()  # signals sent to the group while the leader lived
        self.scanned = False  # escapees already hunted by token
        self.wake: asyncio.Future[None] | None = None
        self.streams: dict[int, int] = {out_fd: STDOUT, err_fd: STDERR}
        self.in_fd = in_fd
        self.stdin = memoryview(stdin)
        self.writing = False
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            procs.signal_group(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.close()
            raise
        self.placement = procs.place(pid, token)
        loop.add_reader(self.pidfd, self._on_exit)
        for fd in self.streams:
            os.set_blocking(fd, False)
        # Most tasks are short: their output is read at their exit, without ever watching the
        # pipes (two selector registrations and removals less per run). A run still going after
        # a moment gets its pipes watched, and its output streams live from then on.
        self.watching: asyncio.TimerHandle | None = loop.call_later(
            _WATCH_DELAY, self._watch_streams
        )
        if in_fd >= 0:
            os.set_blocking(in_fd, False)
            self._write_stdin()

    # -- callbacks ---------------------------------------------------------------------------

    def _watch_streams(self) -> None:
        """Read the pipes as data comes (from now on)."""
        if self.watching is None:
            return
        self.watching.cancel()
        self.watching = None
        for fd in self.streams:
            self.loop.add_reader(fd, self._on_readable, fd)

    def _notify(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    @property
    def cgroup(self) -> str:
        """The run's cgroup directory, once the placer has made it; "" until then or without."""
        placement = self.placement
        return placement.path if placement is not None and placement.created else ""

    def _on_exit(self) -> None:
        self.loop.remove_reader(self.pidfd)
        placement = self.placement
        if not self.terminating:
            # The zombie leader still pins the group id: no chance of hitting a reused one.
            procs.signal_group(self.pid, signal.SIGKILL)
            if placement is not None:
                procs.release(placement)
        try:
            _, self.status = os.waitpid(self.pid, 0)
        except ChildProcessError:  # someone else reaped it; status unknown
            self.status = 255 << 8
        os.close(self.pidfd)
        self.pidfd = -1
        procs.spawned.discard(self.pid)
        self._notify()

    def _on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.capture.feed(self.streams[fd], data)
        else:
            self._close_stream(fd)

    def _close_stream(self, fd: int) -> None:
        if self.watching is None:
            self.loop.remove_reader(fd)
        os.close(fd)
        del self.streams[fd]
        if not self.streams:
            self._notify()

    def _write_stdin(self) -> None:
        try:
            while self.stdin:
                n = os.write(self.in_fd, self.stdin)
                self.stdin = self.stdin[n:]
        except BlockingIOError:
            if not self.writing:
                self.loop.add_writer(self.in_fd, self._write_stdin)
                self.writing = True
            return
        except OSError:  # EPIPE: the command does not read its input
            pass
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self.in_fd < 0:
            return
        if self.writing:
            self.loop.remove_writer(self.in_fd)
            self.writing = False
        os.close(self.in_fd)
        self.in_fd = -1

    # -- ending ------------------------------------------------------------------------------

    async def _wait(self, timeout: float, done: Callable[[], bool], poll: float = 0.0) -> None:
        """Wait until ``done()`` or ``timeout`` seconds pass.

        ``done`` is checked on each notify (exit, end of output) and, with ``poll``, also at
        intervals growing from 5 ms to ``poll`` (for conditions nothing notifies, like a group
        emptying).
        """
        deadline = self.loop.time() + timeout
        step = 0.005
        while not done():
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                return
            self.wake = self.loop.create_future()
            await asyncio.wait({self.wake}, timeout=min(step, remaining) if poll else remaining)
            step = min(step * 2, poll)

    async def wait_exit(self) -> None:
        """Wait for the main process to exit and be reaped."""
        while self.status is None:
            self.wake = self.loop.create_future()
            await self.wake

    def _read_available(self) -> None:
        """Read what the pipes already hold, without waiting (bounded per stream)."""
        for fd in list(self.streams):
            stream = self.streams[fd]
            got = 0
            while got < _SYNC_DRAIN_MAX:
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._close_stream(fd)
                    break
                got += len(data)
                self.capture.feed(stream, data)

    def _kill_escapees(self, sig: int) -> None:
        self._found(procs.kill_token(self.token, sig))

    def _signal_all(self, sig: int) -> None:
        """Send ``sig`` once to every process of the run (see :func:`procs.signal_run`)."""
        if self.status is None:
            self.signalled.add(sig)
        self._found(procs.signal_run(self.pid, self.token, sig, self.cgroup))

    def _found(self, escapees: list[int]) -> None:
        self.scanned = True
        if escapees:
            # Adopted escapees turn into our zombies once dead; reap them soon.
            self.loop.call_later(0.1, reap_orphans)

    async def drain(self) -> None:
        """After the exit: read the rest of the output; kill escapees if they hold the pipes."""
        self._read_available()
        if not self.streams:
            return
        self._watch_streams()
        # Killed group members may take a moment to die and release the pipes.
        await self._wait(_LEFTOVER_WAIT, lambda: not self.streams)
        if self.streams:
            self._kill_escapees(signal.SIGKILL)
            await self._wait(_ESCAPEE_WAIT, lambda: not self.streams)
        self._read_available()

    def _group_gone(self) -> bool:
        if self.status is None:
            return False
        if self.cgroup and cgroups.populated(self.cgroup):
            return False
        # Dead members adopted by us (as subreaper) are zombies that keep the group id alive.
        reap_orphans()
        return not procs.group_alive(self.pid)

    async def terminate(self, grace: float) -> None:
        """SIGTERM every process of the run once, SIGKILL after ``grace``; reap; swallow
        re-cancels."""
        self.terminating = True
        self._watch_streams()
        placement = self.placement
        # A cancel right after the spawn: let the placer finish, so the cgroup holds the run.
        with contextlib.suppress(asyncio.CancelledError):
            if placement is not None and not placement.done:
                await self._wait(_PLACE_WAIT, lambda: placement.done, poll=0.01)
        if self.status is None:
            self._signal_all(signal.SIGTERM)
        elif not self.streams:
            return  # it had already ended (and its group was killed) when the cancel came
        # A second cancel escalates at once (the caller re-raises the first).
        with contextlib.suppress(asyncio.CancelledError):
            await self._wait(grace, self._group_gone, poll=0.05)
        self._signal_all(signal.SIGKILL)
        for _ in range(3):
            try:
                await self._wait(_EXIT_WAIT, lambda: self.status is not None)
                await self.drain()
                return
            except asyncio.CancelledError:
                continue

    def result(self) -> Exit | None:
        """The Exit once the main process is reaped."""
        if self.status is None:
            return None
        code = os.waitstatus_to_exitcode(self.status)
        if code < 0:
            return Exit(self.pid, None, -code, -code in self.signalled)
        return Exit(self.pid, code, None, False)

    def close(self) -> None:
        """Release everything; kill whatever could still be running."""
        if self.status is None:
            # Only on error paths: leave the pidfd reader to reap it once dead.
            procs.signal_group(self.pid, signal.SIGKILL)
        if self.streams and not self.scanned:
            self._kill_escapees(signal.SIGKILL)
        if self.placement is not None:
            procs.release(self.placement)
        for fd in list(self.streams):
            self._close_stream(fd)
        if self.watching is not None:
            self.watching.cancel()
            self.watching = None
        self._close_stdin()


def task_environment(variables: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """A task's environment: its own ``variables``, or (when it has none) this process's; then
    ``extra`` on top (``TASKER_*``). :func:`run_command` adds ``TASKER_RUN_TOKEN``."""
    env = dict(variables) if variables else dict(os.environ)
    env.update(extra)
    return env


async def run_command(
    argv: Sequence[str],
    *,
    shell: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes = b"",
    capture: Capture,
    kill_grace: float = 5.0,
    on_spawn: Callable[[Spawned], None] | None = None,
) -> Exit:
    """Run a command to its end and return how it ended.

    ``shell=True`` runs ``/bin/sh -c argv[0] argv[1:]...``; otherwise argv[0] is looked up in the
    task's PATH. ``env`` None inherits the daemon's environment (``TASKER_RUN_TOKEN`` is added
    either way). ``stdin`` bytes are fed then closed; empty means /dev/null. ``on_spawn`` gets the
    :class:`Spawned` process right after it starts, before any output is delivered. Raises
    SpawnError if it cannot start. On cancellation every process of the run gets SIGTERM once,
    SIGKILL after ``kill_grace`` seconds, and CancelledError is re-raised (``capture.exit`` tells
    how it died).
    """
    if not argv:
        raise ValueError("argv is empty")
    loop = asyncio.get_running_loop()
    token = procs.new_token()
    full_env = {**(os.environ if env is None else env), TOKEN_VAR: token}
    args = ["/bin/sh", "-c", *argv] if shell else list(argv)
    try:
        path = "/bin/sh" if shell else _resolve(argv[0], full_env)
        pid, out_fd, err_fd, in_fd = _spawn(path, args, full_env, cwd, stdin)
    except OSError as e:
        raise SpawnError(f"spawn failed: {argv[0]}: {e.strerror or e}") from e
    except ValueError as e:  # bad env entry or NUL byte in an argument
        raise SpawnError(f"spawn failed: {argv[0]}: {e}") from e
    procs.spawned.add(pid)
    procs.live_tokens.add(token)
    try:
        run = _Run(loop, pid, token, capture, out_fd, err_fd, in_fd, stdin)
    except BaseException:
        procs.live_tokens.discard(token)
        procs.spawned.discard(pid)
        raise
    try:
        if on_spawn is not None:
            cgroup = run.placement.path if run.placement is not None else ""
            on_spawn(Spawned(pid, pid, token, cgroup))
        try:
            await run.wait_exit()
        except asyncio.CancelledError:
            await run.terminate(kill_grace)
            raise
        await run.drain()
        result = run.result()
        assert result is not None
        return result
    finally:
        capture.exit = run.result()
        run.close()
        procs.live_tokens.discard(token)


async def run_hook(
    command: str, *, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> str:
    """Run a worker hook (``/bin/sh -c command``) and return its stdout, stripped.

    Raises HookError carrying stderr's last line on a non-zero exit or when ``timeout`` passes
    (the hook is then killed like a cancelled task, with a short grace).
    """
    capture = Capture(HOOK_OUTPUT_LIMIT)
    try:
        async with asyncio.timeout(timeout):
            ended = await run_command(
                [command], shell=True, env=env, capture=capture, kill_grace=HOOK_KILL_GRACE
            )
    except TimeoutError:
        last = _last_line(capture.stderr)
        raise HookError(
            last or f"hook timed out after {format_duration(timeout)}",
            exit=capture.exit,
            stderr=last,
        ) from None
    except SpawnError as e:
        raise HookError(str(e)) from e
    if ended.exit_code != 0:
        last = _last_line(capture.stderr)
        how = (
            f"exit status {ended.exit_code}"
            if ended.signal is None
            else f"killed by signal {ended.signal}"
        )
        raise HookError(last or f"hook failed: {how}", exit=ended, stderr=last)
    return capture.stdout.decode(errors="replace").strip()


def _last_line(data: bytes | bytearray) -> str:
    lines = bytes(data).decode(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else ""

"""A worker's keeper: a small process that ends the worker's runs if the worker dies.

A run's processes live in a session of their own (:mod:`taskerd.runner`), so nothing reaches
them when the Dask worker that started them is killed with ``kill -9`` (or exits at once
because its nanny died): ``PR_SET_PDEATHSIG`` would only cover the main process, and is not
inherited by its children. So each worker starts one keeper (``python -m taskerd.dask.keeper``,
in a session of its own so that a signal to the worker's group does not reach it) and tells
it, through a pipe, each run it spawns and ends::

    + <pgid> <kill_grace> <token>\\n     (a run started)
    - <token>\\n                         (it ended)

When the pipe reaches its end (the worker exited, whatever the way), the keeper gives each run
still listed the local runner's ending (:func:`taskerd.procs.signal_run`: its process group,
then every process carrying its token, so ``setsid`` escapees too): SIGTERM (and SIGCONT),
then SIGKILL after the longest ``kill_grace``; then it exits. A worker that closes normally
ends its runs itself first, so the keeper finds nothing left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import time

from taskerd import procs
from taskerd.procs import TOKEN_VAR

log = logging.getLogger("taskerd")

_POLL = 0.05


class Keeper:
    """The worker's end of the pipe to its keeper process."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskerd.dask.keeper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        assert self.proc.stdin is not None
        self._fd = self.proc.stdin.fileno()
        os.set_blocking(self._fd, False)  # never let a stuck keeper block the worker's loop
        self._broken = False

    def _send(self, line: str) -> None:
        if self._broken:
            return
        try:
            os.write(self._fd, line.encode())
        except OSError as exc:  # EAGAIN (keeper stuck) or EPIPE (keeper gone)
            self._broken = True
            log.warning(
                "keeper %d unreachable (%s): a kill -9 of this worker may leave its runs",
                self.proc.pid,
                errno.errorcode.get(exc.errno or 0, exc),
            )

    def watch(self, pgid: int, token: str, grace: float) -> None:
        """A run started: its process group, token and kill grace."""
        self._send(f"+ {pgid} {grace:g} {token}\n")

    def forget(self, token: str) -> None:
        """A run ended (its processes were ended by the runner)."""
        self._send(f"- {token}\n")

    def close(self, timeout: float = 5.0) -> None:
        """Close the pipe and wait for the keeper to exit."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def end(runs: dict[str, tuple[int, float]]) -> int:
    """End every process of ``runs`` (token -> (pgid, grace)); return how many runs had some."""
    if not runs:
        return 0
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for token, (pgid, _) in runs.items():
            procs.signal_run(pgid, token, sig)
    deadline = time.monotonic() + max(grace for _, grace in runs.values())
    alive = dict(runs)
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL)
        alive = {t: r for t, r in alive.items() if _alive(r[0], t)}
    for token, (pgid, _) in alive.items():
        procs.signal_run(pgid, token, signal.SIGKILL)
    return len(runs)


def _alive(pgid: int, token: str) -> bool:
    return procs.group_alive(pgid) or bool(procs.kill_token(token, 0, pgid=pgid))


def main() -> None:
    """The keeper process: read the worker's lines until EOF, then end what is listed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the end of the pipe ends the keeper
    runs: dict[str, tuple[int, float]] = {}
    for line in sys.stdin.buffer:
        op, _, rest = line.decode(errors="replace").strip().partition(" ")
        if op == "+":
            pgid, grace, token = rest.split(" ", 2)
            runs[token] = (int(pgid), float(grace))
        elif op == "-":
            runs.pop(rest, None)
    end(runs)


if __name__ == "__main__":
    main()

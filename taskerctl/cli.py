"""The ``taskerctl`` command line (entry point :func:`main`); the commands are in
:mod:`taskerctl._app`, one click group.

Exit status:

====  ==============================================
N     the task's own exit code, when it ran (--wait, --follow, run, logs -f)
124   the task timed out
128+N the task was killed by signal N
125   the task was cancelled
123   the task was lost (an at-most-once task when the daemon died)
127   the task could not be started (command not found, not executable, bad cwd)
122   the task failed without an exit status of its own (interrupted during its last allowed
      attempt, or a daemon-side error): the message says which
130   interrupted (Ctrl-C)
2     usage error
69    the daemon is unreachable (with a hint how to start it)
77    no token, an unknown one, or one whose role may not do this (TCP listeners)
75    the daemon's queue is full
74    a stream fell behind (read too slowly) and was dropped
1     any other error, such as a task or group not in a state the command applies to
      (FAILED_PRECONDITION: pausing a finished task, a new priority for a running one...)
====  ==============================================

A paused or stashed task, or one waiting for its dependencies or scheduled for later, has not
ended: it has no exit status yet (``exit_status`` is null in ``show --json``). ``wait`` and ``-f``
name such a task on stderr and wait on: it ends once resumed, enqueued, its dependencies have
ended or it is due (or once cancelled), and they exit with its status then. A task whose
dependency did not succeed ends CANCELLED (125), its error naming the dependency.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def dispatch(argv: Sequence[str]) -> int:
    """Run ``taskerctl`` with ``argv`` (without the program name); return the exit status."""
    from taskerctl._app import run_app

    return run_app(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exits with the status of :func:`dispatch`.

    The process ends with ``os._exit`` once stdout and stderr are flushed: everything it opened
    is closed by then, and the interpreter's teardown (a third of a gRPC client's start-up
    cost) would only delay the shell. Call :func:`dispatch` to run taskerctl in a process that
    goes on.
    """
    # gRPC's own log lines (a failed TLS handshake is logged at INFO) would precede the one
    # line of error taskerctl prints; it reads the variable when its first channel is made.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    status = dispatch(sys.argv[1:] if argv is None else argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what was left unread is lost anyway
            status = status or 1
    os._exit(status)

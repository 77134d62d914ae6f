"""The ``taskerctl`` command line (entry point :func:`main`).

``submit`` and ``run`` take a lean path (no typer, no rich) because they run thousands of times
in shell loops; every other command goes through the typer app in :mod:`taskerctl._app`.

Exit status:

====  ==============================================
N     the task's own exit code, when it ran
124   the task timed out
128+N the task was killed by signal N
125   the task was cancelled
123   the task was lost (an at-most-once task when the daemon died)
127   the task could not be spawned (command not found)
2     usage error
69    the daemon is unreachable (with a hint how to start it)
75    the daemon's queue is full
1     any other error
====  ==============================================
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

#: Commands served by the lean path in :mod:`taskerctl._submit`.
LEAN_COMMANDS = ("submit", "run")


def dispatch(argv: Sequence[str]) -> int:
    """Run ``taskerctl`` with ``argv`` (without the program name); return the exit status."""
    args = list(argv)
    if "_TASKERCTL_COMPLETE" not in os.environ:
        from taskerctl import _submit

        try:
            values, rest = _submit.parse_options(args, _submit.GLOBAL_OPTIONS, stop_at_unknown=True)
        except _submit.UsageError:
            rest = []  # let the full CLI report it
        if rest and rest[0] in LEAN_COMMANDS:
            return _submit.main(rest[0], rest[1:], values)
    from taskerctl._app import run_app

    return run_app(args)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exits with the status of :func:`dispatch`."""
    sys.exit(dispatch(sys.argv[1:] if argv is None else argv))

"""``taskerctl submit`` and ``taskerctl run``: their one option table, its parser, and the lean
code path that runs them without importing typer or rich (``submit`` runs thousands of times in
shell loops).

Options end at ``--`` or at the first word that is not an option, so in
``taskerctl submit sh -c 'exit 3'`` the ``-c`` belongs to ``sh``. The typer app registers
``submit`` and ``run`` as pass-through commands that call :func:`main` here, so there is one
parser with one set of semantics.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskerctl._sync import Client
    from taskerctl.models import TaskEvent, TaskResult


class UsageError(Exception):
    """A bad command line (exit status 2)."""


@dataclass(frozen=True, slots=True)
class Opt:
    """One command-line option: ``metavar`` None means a boolean flag."""

    dest: str
    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    multiple: bool = False
    commands: frozenset[str] = frozenset({"submit", "run"})


def _only(*names: str) -> frozenset[str]:
    return frozenset(names)


#: Global options, accepted before the command (and by submit/run after it).
GLOBAL_OPTIONS: tuple[Opt, ...] = (
    Opt(
        "socket",
        ("--socket",),
        "Daemon socket (default: $TASKER_SOCKET or the usual path).",
        "PATH",
    ),
    Opt("json", ("--json",), "Print data as JSON."),
)

#: The options of ``submit`` and ``run``.
SUBMIT_OPTIONS: tuple[Opt, ...] = (
    Opt("priority", ("-p", "--priority"), "low, normal (default), high or critical.", "PRIO"),
    Opt("timeout", ("-t", "--timeout"), "Kill the task after this long (5s, 1m30s).", "DUR"),
    Opt("queue_timeout", ("--queue-timeout",), "Give up if not started within this.", "DUR"),
    Opt("once", ("--once",), "At most once: never re-run after a crash."),
    Opt("retries", ("--retries",), "Re-queue at most N times after a lost attempt.", "N"),
    Opt("env", ("-e", "--env"), "Set K=V in the task's env (repeatable).", "K=V", True),
    Opt("cwd", ("--cwd",), "Working directory (default: the current one).", "DIR"),
    Opt("labels", ("-l", "--label"), "Label the task K=V (repeatable).", "K=V", True),
    Opt("shell", ("--shell",), "Run the command with /bin/sh -c."),
    Opt("wait", ("--wait",), "Wait and exit with the task's status.", commands=_only("submit")),
    Opt(
        "follow",
        ("-f", "--follow"),
        "Stream the task's output live, then exit with its status.",
        commands=_only("submit"),
    ),
    Opt(
        "batch",
        ("--batch",),
        "Submit one shell command per line of FILE (- for stdin), 1,000 per RPC.",
        "FILE",
        commands=_only("submit"),
    ),
    *GLOBAL_OPTIONS,
    Opt("help", ("-h", "--help"), "Show this message and exit."),
)

EXIT_CODES_HELP = """\
Exit status: the task's own code when it ran; 124 timed out; 128+N killed by signal N;
125 cancelled; 123 lost; 127 spawn failed (command not found); 2 usage error;
69 daemon unreachable; 75 queue full; 74 stream fell behind (read too slowly); 1 other errors."""


def parse_options(
    args: Sequence[str], options: Iterable[Opt], *, stop_at_unknown: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Parse leading options of ``args``; return ``(values, rest)``.

    ``rest`` starts at the first non-option word (a leading ``--`` is dropped). Unknown options
    raise :class:`UsageError`, or end the options when ``stop_at_unknown``.
    """
    table = {flag: opt for opt in options for flag in opt.flags}
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return values, list(args[i + 1 :])
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            name, eq, attached = arg.partition("=")
        else:
            name, attached = arg[:2], arg[2:]
            eq = "=" if attached else ""
        opt = table.get(name)
        if opt is None:
            if stop_at_unknown:
                break
            raise UsageError(f"no such option: {name}")
        i += 1
        if opt.metavar is None:
            if eq:
                raise UsageError(f"option {name} does not take a value")
            values[opt.dest] = True
            continue
        if not eq:
            if i >= len(args):
                raise UsageError(f"option {name} requires an argument")
            attached = args[i]
            i += 1
        if opt.multiple:
            values.setdefault(opt.dest, []).append(attached)
        else:
            values[opt.dest] = attached
    return values, list(args[i:])


def format_help(command: str) -> str:
    """The ``--help`` text of ``submit`` or ``run``, from the option table."""
    usage = {
        "submit": "Usage: taskerctl submit [OPTIONS] [--] CMD [ARGS...]\n"
        "       taskerctl submit --batch FILE|-\n\n"
        "Submit a task to the queue; print its id (see --wait, --follow).",
        "run": "Usage: taskerctl run [OPTIONS] [--] CMD [ARGS...]\n\n"
        "Run a task at once (bypassing the queue), stream its output, exit with its status.",
    }[command]
    lines = [usage, "", "Options end at the first word that is not an option.", "", "Options:"]
    for opt in SUBMIT_OPTIONS:
        if command in opt.commands:
            names = ", ".join(opt.flags) + (f" {opt.metavar}" if opt.metavar else "")
            lines.append(f"  {names:<26} {opt.help}")
    return "\n".join([*lines, "", EXIT_CODES_HELP, ""])


def _pairs(items: Iterable[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"invalid {what} {item!r}: use K=V")
        out[key] = value
    return out


def task_options(values: dict[str, Any]) -> dict[str, Any]:
    """Turn parsed option values into ``Client.submit`` keyword arguments (validated)."""
    from taskerctl.models import parse_priority, to_seconds

    kw: dict[str, Any] = {"shell": bool(values.get("shell")), "once": bool(values.get("once"))}
    try:
        if "priority" in values:
            kw["priority"] = parse_priority(values["priority"])
        for dest in ("timeout", "queue_timeout"):
            if dest in values:
                kw[dest] = to_seconds(values[dest])
    except ValueError as err:
        raise UsageError(str(err)) from None
    if "retries" in values:
        try:
            kw["retries"] = int(values["retries"])
        except ValueError:
            raise UsageError(f"invalid --retries {values['retries']!r}: not a number") from None
    env = dict(os.environ)
    env.update(_pairs(values.get("env", ()), "--env"))
    kw["env"] = env
    if "cwd" in values:
        kw["cwd"] = values["cwd"]
    if "labels" in values:
        kw["labels"] = _pairs(values["labels"], "--label")
    return kw


def _write(stream: IO[bytes], data: bytes) -> None:
    stream.write(data)
    stream.flush()


def follow(
    events: Iterable[TaskEvent],
    *,
    stdout: bool = True,
    stderr: bool = True,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> TaskResult | None:
    """Copy a task's output chunks to our stdout/stderr as they arrive; return its result.

    When no chunk arrived (the task had already finished), the output in the final event is
    printed instead, so nothing is shown twice.
    """
    seen = False
    for ev in events:
        if on_event is not None:
            on_event(ev)
        if ev.kind == "output":
            seen = True
            if ev.stream == "stderr":
                if stderr:
                    _write(sys.stderr.buffer, ev.data)
            elif stdout:
                _write(sys.stdout.buffer, ev.data)
        elif ev.kind == "finished" and ev.result is not None:
            if not seen:
                if stdout and ev.result.stdout:
                    _write(sys.stdout.buffer, ev.result.stdout)
                if stderr and ev.result.stderr:
                    _write(sys.stderr.buffer, ev.result.stderr)
            return ev.result
    return None


def _batch_lines(path: str) -> Iterator[str]:
    fh = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    try:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line
    finally:
        if fh is not sys.stdin:
            fh.close()


def _print_json(data: object) -> None:
    import json

    print(json.dumps(data, indent=None if isinstance(data, dict) and "id" in data else 2))


def _run_submit(client: Client, values: dict[str, Any], cmd: list[str]) -> int:
    kw = task_options(values)
    as_json = bool(values.get("json"))
    if "batch" in values:
        if cmd or values.get("wait") or values.get("follow"):
            raise UsageError("--batch takes no command, --wait or --follow")
        kw["shell"] = True
        handles = client.submit_many(_batch_lines(values["batch"]), batch_size=1000, **kw)
        out = sys.stdout
        if as_json:
            _print_json([h.id for h in handles])
        else:
            out.write("".join(f"{h.id}\n" for h in handles))
        return 0
    if not cmd:
        raise UsageError("missing command (taskerctl submit [OPTIONS] -- CMD [ARGS...])")
    handle = client.submit(cmd, **kw)
    if values.get("follow"):
        # stdout carries the task's own output, so the id goes to stderr.
        print(handle.id, file=sys.stderr, flush=True)
        result = follow(handle.events(output=True))
    elif values.get("wait"):
        if not as_json:
            print(handle.id, flush=True)
        result = handle.wait()
    elif as_json:
        _print_json({"id": handle.id})
        return 0
    else:
        print(handle.id)
        return 0
    if result is None:
        from taskerctl.errors import DaemonUnavailable

        raise DaemonUnavailable(client.socket, "event stream ended before the task finished")
    if as_json:
        _print_json(result.to_json())
    return result.exit_status


def _run_run(client: Client, values: dict[str, Any], cmd: list[str]) -> int:
    if not cmd:
        raise UsageError("missing command (taskerctl run [OPTIONS] -- CMD [ARGS...])")
    kw = task_options(values)
    if values.get("json"):
        result = client.run(cmd, **kw)
        _print_json(result.to_json(output=True))
        return result.exit_status
    followed = follow(client.run_stream(cmd, **kw))
    if followed is None:
        from taskerctl.errors import TaskerError

        raise TaskerError("the Run stream ended before the task finished")
    return followed.exit_status


def main(command: str, args: Sequence[str], globals_: dict[str, Any] | None = None) -> int:
    """Run ``submit`` or ``run`` with ``args`` (after the command word); return the exit status.

    Errors become one line on stderr.
    """
    from taskerctl.errors import TaskerError

    try:
        allowed = [o for o in SUBMIT_OPTIONS if command in o.commands]
        values, cmd = parse_options(args, allowed)
        values = {**(globals_ or {}), **values}
        if values.get("help"):
            sys.stdout.write(format_help(command))
            return 0
        from taskerctl._sync import Client

        with Client(values.get("socket")) as client:
            if command == "submit":
                return _run_submit(client, values, cmd)
            return _run_run(client, values, cmd)
    except UsageError as err:
        print(f"taskerctl: error: {err}", file=sys.stderr)
        print(f"Try 'taskerctl {command} --help'.", file=sys.stderr)
        return 2
    except TaskerError as err:
        print(f"taskerctl: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"taskerctl: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

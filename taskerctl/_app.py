"""The ``taskerctl`` command line: one click group, one help layout, one way to fail.

Every command takes the global options (``--socket``, ``--json``, ``-h``) after its name as well
as before it. Options end at ``--`` or at the first word that is not an option wherever a command
takes a command line (``submit``, ``run``). Errors are one ``taskerctl: error:`` line on stderr and
an exit status (see :mod:`taskerctl.cli`); with ``--json`` stdout carries one JSON document.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from taskerctl import __version__
from taskerctl import _submit as task
from taskerctl.errors import EXIT_OTHER, EXIT_USAGE, DaemonUnavailable, TaskerError

if TYPE_CHECKING:
    from taskerctl._sync import Client
    from taskerctl.models import Group as TaskGroup
    from taskerctl.models import Schedule, SpecOptions, Stats, TaskOptions, TaskResult

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\
Exit status: the task's own code when it ran (--wait, --follow, run, logs -f); 124 timed out;
128+N killed by signal N; 125 cancelled; 123 lost; 127 could not be started; 122 failed without
an exit status of its own; 130 interrupted (Ctrl-C); 2 usage error; 69 daemon unreachable;
75 queue full; 74 stream fell behind (read too slowly); 77 no token, an unknown one, or a role
that may not (TCP); 1 other errors, such as a task or group
not in a state the command applies to. A paused or stashed task (or a waiting or scheduled one)
has not ended: wait and -f name it on stderr and wait on, until it is resumed, enqueued, or due,
and ends."""

_EPILOG = EXIT_CODES_HELP.replace("\n", " ")

# -- help: one layout for every command ------------------------------------------------------


class _Help(click.Command):
    """Plain help for every command and group: usage, text, options, then the global ones.

    ``usage`` replaces the generated usage line's arguments.
    """

    def __init__(self, *args: Any, usage: str | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.usage = usage

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        if self.usage is not None:
            return [self.usage]
        return super().collect_usage_pieces(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        help_option = self.get_help_option(ctx)
        own: list[tuple[str, str]] = []
        common: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            row = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if row is not None:
                is_global = param.name in _GLOBAL_NAMES or param is help_option
                (common if is_global and not isinstance(self, click.Group) else own).append(row)
        if own:
            with formatter.section("Options"):
                formatter.write_dl(own)
        if common:
            with formatter.section("Global options (also before the command)"):
                formatter.write_dl(common)
        if isinstance(self, click.Group):
            self.format_commands(ctx, formatter)


class Command(_Help):
    """A taskerctl command."""


class Group(_Help, click.Group):
    """A group of commands; run bare, it prints its help (once) and exits 2."""

    command_class = Command

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("invoke_without_command", True)
        super().__init__(*args, **kw)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _Help.format_options(self, ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names: dict[click.Command, list[str]] = {}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                names.setdefault(cmd, []).append(name)
        rows = [(", ".join(n), cmd.get_short_help_str(100)) for cmd, n in names.items()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they were added


def _help_if_bare(ctx: click.Context) -> None:
    """A group run without a command prints its help (once) and exits 2."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(EXIT_USAGE)


# -- parameter types: metavars and messages a person reads -----------------------------------


class TaskId(click.ParamType[int]):
    """A task's id (``what``: a schedule's)."""

    name = "id"

    def __init__(self, what: str = "task") -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from taskerctl.models import parse_id

        try:
            return parse_id(value, self.what)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class TaskIds(click.ParamType[tuple[int, ...]]):
    """``ID[,ID...]``: task ids, comma-separated."""

    name = "ids"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        return tuple(TaskId().convert(v, param, ctx) for v in str(value).split(","))


class When(click.ParamType[datetime]):
    """``HH:MM`` (today, or tomorrow once past), ISO 8601, or seconds since the epoch."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        from taskerctl.models import parse_time

        try:  # the models' parser, as the clients' start_at
            return value if isinstance(value, datetime) else parse_time(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


#: What a google.protobuf.Duration carries: 10,000 years.
MAX_DURATION = 315_576_000_000.0


class Duration(click.ParamType[float]):
    """``250ms``, ``5s``, ``1m30s``, ``2h`` or plain seconds."""

    name = "duration"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        from taskerctl.durations import parse_duration

        try:
            seconds = parse_duration(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)
        if seconds > MAX_DURATION:
            self.fail(f"invalid duration {value!r}: more than 10,000 years", param, ctx)
        if self.positive and seconds <= 0:
            self.fail(f"invalid duration {value!r}: must be more than 0", param, ctx)
        return seconds


class Pair(click.ParamType[tuple[str, str]]):
    name = "K=V"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, eq, val = str(value).partition("=")
        if not eq or not key:
            self.fail(f"{value!r} is not K=V", param, ctx)
        return key, val


class Named(click.ParamType[str]):
    """A priority or a state by name (states also as a comma-separated list), checked by the
    models' own parser."""

    def __init__(self, name: str, parse: Callable[[str], Any], *, many: bool = False) -> None:
        self.name = name
        self.parse = parse
        self.many = many

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        try:
            for name in text.split(",") if self.many else [text]:
                self.parse(name)
        except ValueError as err:
            self.fail(str(err), param, ctx)
        return text


def _parse_priority(text: str) -> Any:
    from taskerctl.models import parse_priority

    return parse_priority(text)


def _parse_state(text: str) -> Any:
    from taskerctl.models import parse_state

    return parse_state(text)


class Whole(click.ParamType[int]):
    """A whole number from ``minimum`` (at most 2**32 - 1, what the requests carry)."""

    name = "number"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not (text.isdecimal() and self.minimum <= int(text) < 1 << 32):
            self.fail(f"{value!r} is not a whole number from {self.minimum}", param, ctx)
        return int(text)


def _parse_live_state(text: str) -> Any:
    from taskerctl.models import LIVE_STATES

    state = _parse_state(text)
    if state not in LIVE_STATES:
        raise ValueError(
            f"invalid state {text!r}: only queued or running (or paused, stashed, waiting or "
            "scheduled) tasks can be cancelled"
        )
    return state


PRIORITY = Named("priority", _parse_priority)
STATE = Named("state", _parse_state, many=True)
LIVE_STATE = Named("state", _parse_live_state, many=True)


def group_option(help: str, *, many: bool = False) -> Callable[[F], F]:
    """``-g/--group NAME``: the group a command is about (``many``: repeatable, as ``groups``)."""
    if many:
        return click.option("-g", "--group", "groups", multiple=True, metavar="NAME", help=help)
    return click.option("-g", "--group", metavar="NAME", help=help)


# -- global options ----------------------------------------------------------------------------


@dataclass
class Globals:
    """The global options, wherever they were given (after the command wins)."""

    socket: str | None = None
    json: bool = False
    address: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None
    insecure: bool = False


SOCKET_HELP = "The daemon's socket (default: $TASKER_SOCKET, else the daemon's default path)."
JSON_HELP = "Print one JSON document on stdout."
#: The global options but --json and --insecure: (flag, metavar, help).
_GLOBALS = (
    ("--socket", "PATH", SOCKET_HELP),
    ("--address", "HOST:PORT", "Reach taskerd over TCP with TLS instead (default: "
     "$TASKER_ADDRESS)."),
    ("--token-file", "FILE", "The token to send over TCP, read from FILE (default: "
     "$TASKER_TOKEN_FILE, else the token in $TASKER_TOKEN)."),
    ("--tls-ca", "FILE", "The CA (PEM) that signed taskerd's certificate (default: "
     "$TASKER_TLS_CA, else the system's CAs)."),
    ("--tls-cert", "FILE", "A client certificate (PEM), for mutual TLS."),
    ("--tls-key", "FILE", "Its private key (PEM)."),
)  # fmt: skip
_GLOBAL_NAMES = (
    "as_json", "insecure", *(flag[2:].replace("-", "_") for flag, _, _ in _GLOBALS)
)  # fmt: skip


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        g = ctx.ensure_object(Globals)
        setattr(g, "json" if param.name == "as_json" else str(param.name), value)


def _global_params() -> list[click.Option]:
    """The global options, made once (every command shares them: they keep no state of their
    own, and making them anew for each command was a good part of taskerctl's start-up)."""
    params = [
        click.Option([flag], metavar=metavar, expose_value=False, callback=_set_global, help=text)
        for flag, metavar, text in _GLOBALS
    ]
    params.append(click.Option(
        ["--json", "as_json"], is_flag=True, expose_value=False, callback=_set_global,
        help=JSON_HELP,
    ))  # fmt: skip
    params.append(click.Option(
        ["--insecure"], is_flag=True, expose_value=False, callback=_set_global,
        help="With --address: plaintext TCP (a loopback listener with insecure_loopback).",
    ))  # fmt: skip
    return params


_GLOBAL_PARAMS = _global_params()


def global_options(f: F) -> F:
    """Add the global options (``--socket``, ``--json``, ``--address``...) to a command."""
    # As click.option does: decorators run bottom-up, and the list is reversed when the command
    # is made, so these come last in its help, in _GLOBALS's order.
    params = f.__dict__.setdefault("__click_params__", [])
    params.extend(reversed(_GLOBAL_PARAMS))
    return f


def settings() -> Globals:
    return click.get_current_context().ensure_object(Globals)


@contextmanager
def client() -> Iterator[Client]:
    from taskerctl._sync import Client

    options = where_to()
    with Client(options.pop("socket"), **options) as c:
        yield c


def where_to() -> dict[str, Any]:
    """Where the daemon is, from the global options: the clients' ``socket`` and
    :class:`~taskerctl._core.Remote` arguments (the token read from its file)."""
    from taskerctl._core import read_token

    g = settings()
    token_file = g.token_file or os.environ.get("TASKER_TOKEN_FILE")
    return {
        "socket": g.socket, "address": g.address,
        "token": read_token(token_file) if token_file else None, "tls_ca": g.tls_ca,
        "tls_cert": g.tls_cert, "tls_key": g.tls_key, "insecure": g.insecure,
    }  # fmt: skip


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"taskerctl {__version__}")
        ctx.exit(0)


def _show_completion(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    from click.shell_completion import get_completion_class

    shell = value or os.path.basename(os.environ.get("SHELL", "bash"))
    completion = get_completion_class(shell)
    if completion is None:
        raise click.BadParameter(f"{shell!r}: use bash, zsh or fish", ctx, param)
    root = ctx.find_root().command
    click.echo(completion(root, {}, "taskerctl", "_TASKERCTL_COMPLETE").source())
    ctx.exit(0)


@click.group(
    cls=Group,
    usage="[OPTIONS] COMMAND [ARG]...",
    help="Submit, watch and manage the tasks of the Tasker daemon (taskerd).",
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@global_options
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Print taskerctl's version.",
)
@click.option(
    "--show-completion",
    metavar="[SHELL]",
    is_flag=False,
    flag_value="",
    expose_value=False,
    is_eager=True,
    callback=_show_completion,
    help="Print the completion script for bash, zsh or fish (default: $SHELL), to source.",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    ctx.ensure_object(Globals)
    _help_if_bare(ctx)


# -- submit and run ------------------------------------------------------------------------------

_COMMAND_LINE = "[OPTIONS] [--] COMMAND [ARG]..."
_PASS_COMMAND = {"allow_interspersed_args": False}


#: The help of submit's workflow options.
_HELP = {
    "after": "Queue it once these tasks have all succeeded (repeatable); until then it is "
    "waiting. If one ends otherwise, it is cancelled.",
    "after_any": "Queue it once these tasks have ended, however they ended (repeatable). Not "
    "with --after: a task waits on all its dependencies one way.",
    "delay": "Do not start it before this long from now (scheduled until then).",
    "at": "Do not start it before TIME: HH:MM (local; today, or tomorrow once past), ISO 8601 "
    "(2026-12-24T18:00) or seconds since the epoch.",
    "every": "Make a schedule rather than a task: a new task every DUR (from now, or from --at "
    "or --delay); print the schedule's id.",
    "cron": "Make a schedule: a new task at each match of a cron expression in local time "
    "('*/5 * * * *'); print the schedule's id.",
    "overlap": "With --every or --cron: also start an occurrence while the previous one has not "
    "ended (default: skip it).",
}


def _ids_option(name: str) -> Callable[[F], F]:
    """``--after`` or ``--after-any``: task ids, comma-separated, repeatable."""
    key = name.lstrip("-").replace("-", "_")
    return click.option(
        name, key, type=TaskIds(), multiple=True, metavar="ID[,ID...]", help=_HELP[key]
    )


def _task_options(*, submit: bool) -> Callable[[F], F]:
    """The options shared by ``submit`` and ``run``, in help order."""
    opts: list[Callable[[F], F]] = []
    if submit:
        opts += [
            click.option(
                "-p", "--priority", type=PRIORITY, metavar="PRIO",
                help="low, normal (default), high or critical.",
            ),
            group_option("Queue it in this group (default: default)."),
            click.option(
                "--stashed", is_flag=True,
                help="Keep it stashed, not queued, until `taskerctl enqueue ID`.",
            ),
        ]  # fmt: skip
    opts += [
        click.option(
            "-t", "--timeout", type=Duration(positive=True), metavar="DUR",
            help="Kill the task after this long (250ms, 5s, 1m30s, 2h).",
        ),
    ]  # fmt: skip
    if submit:
        opts.append(
            click.option(
                "--queue-timeout", type=Duration(positive=True), metavar="DUR",
                help="Give up (timed out) if it has not started within this.",
            )
        )  # fmt: skip
    opts += [
        click.option(
            "--retries", type=Whole(), metavar="N",
            help="Run a failed attempt (non-zero exit, or a signal) again, up to N times.",
        ),
        click.option(
            "--max-requeues", type=Whole(), metavar="N",
            help="Re-queue after an attempt lost to a crash or an unhealthy worker, up to N "
            "times (default: the daemon's max_retries).",
        ),
        click.option("--once", is_flag=True, help="At most once: never run it again (LOST)."),
        click.option(
            "-e", "--env", "env", type=Pair(), multiple=True, metavar="K=V",
            help="Set K=V in its environment, which is otherwise yours.",
        ),
        click.option(
            "--cwd", metavar="DIR", help="Its working directory (default: the current one)."
        ),
        click.option(
            "-l", "--label", "labels", type=Pair(), multiple=True, metavar="K=V",
            help="Label it (repeatable).",
        ),
        click.option(
            "--shell", is_flag=True,
            help="Run the words, joined by spaces, as one /bin/sh -c script.",
        ),
        click.option(
            "--no-stdin", is_flag=True,
            help="Do not pass piped standard input to the task (run, --wait, --follow pass it "
            "when it is not a terminal, up to 1 MiB).",
        ),
        click.option(
            "--on-finish", metavar="CMD",
            help="A shell command to run once the task has ended (besides the daemon's).",
        ),
    ]  # fmt: skip
    if submit:
        opts += [
            click.option("--wait", is_flag=True, help="Wait, then exit with its status."),
            click.option(
                "-f", "--follow", is_flag=True,
                help="Print its output live (the id goes to stderr), exit with its status.",
            ),
            click.option(
                "--detach-on-interrupt", is_flag=True,
                help="With --wait or --follow, Ctrl-C leaves the task running (default: "
                "Ctrl-C cancels it).",
            ),
            click.option(
                "--batch", type=click.Path(exists=True, dir_okay=False, allow_dash=True),
                metavar="FILE",
                help="Submit one shell command per line of FILE (- for stdin), 1,000 per "
                "request; print their ids. " + task.BATCH_HELP,
            ),
            _ids_option("--after"),
            _ids_option("--after-any"),
            click.option("--delay", type=Duration(), metavar="DUR", help=_HELP["delay"]),
            click.option("--at", type=When(), metavar="TIME", help=_HELP["at"]),
            click.option("--every", type=Duration(True), metavar="DUR", help=_HELP["every"]),
            click.option("--cron", metavar="EXPR", help=_HELP["cron"]),
            click.option("--overlap/--no-overlap", default=None, help=_HELP["overlap"]),
        ]  # fmt: skip

    def apply(f: F) -> F:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return apply


def _spec_options(opts: dict[str, Any], *, stdin: bool) -> SpecOptions:
    return task.task_options(
        shell=opts["shell"],
        env=dict(opts["env"]),
        labels=dict(opts["labels"]),
        priority=opts.get("priority"),
        timeout=opts["timeout"],
        queue_timeout=opts.get("queue_timeout"),
        once=opts["once"],
        retries=opts["retries"],
        max_requeues=opts["max_requeues"],
        cwd=opts["cwd"],
        stdin=task.read_stdin() if stdin and not opts["no_stdin"] else b"",
        group=opts.get("group"),
        on_finish=opts["on_finish"],
    )


def _when_options(opts: dict[str, Any], spec: SpecOptions) -> TaskOptions:
    """``spec`` with ``--after``/``--after-any`` and ``--delay``/``--at`` (one of each pair)."""
    try:
        return task.when_options(
            spec, after=[i for ids in opts["after"] for i in ids],
            after_any=[i for ids in opts["after_any"] for i in ids], delay=opts["delay"],
            at=opts["at"],
        )  # fmt: skip
    except ValueError as err:
        raise click.UsageError(str(err)) from None


def _add_schedule(command: Sequence[str], opts: dict[str, Any]) -> int:
    """``submit --every`` or ``--cron``: a schedule, not a task."""
    every, cron = opts["every"], opts["cron"]
    if every is not None and cron is not None:
        raise click.UsageError("give --every or --cron, not both")
    for name in ("batch", "wait", "follow", "stashed", "after", "after_any"):
        if opts[name]:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"--every and --cron make a schedule: it takes no {flag}")
    _need_command(command, "submit")
    options = _spec_options(opts, stdin=False)
    try:
        start = task.schedule_start(opts["delay"], opts["at"])
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    with client() as c:
        sched = c.add_schedule(
            task.argv(command, shell=opts["shell"]), every=every, cron=cron,
            overlap=bool(opts["overlap"]), start_at=start, **options,
        )  # fmt: skip
    if settings().json:
        task.dump(sched.to_json())
    else:
        print(sched.id)
        task.note(f"schedule {sched.id}: {sched.when}, next at {_at(sched.next_at)}")
    return 0


@contextmanager
def _open(path: str) -> Iterator[IO[bytes]]:
    if path == "-":
        yield sys.stdin.buffer
    else:
        with open(path, "rb") as fh:
            yield fh


def _need_command(words: Sequence[str], name: str) -> None:
    if not words:
        raise click.UsageError(f"missing command: taskerctl {name} {_COMMAND_LINE}")


@cli.command(usage=_COMMAND_LINE, context_settings=_PASS_COMMAND, epilog=_EPILOG)
@_task_options(submit=True)
@global_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(command: tuple[str, ...], **opts: Any) -> int:
    """Queue a task; print its id.

    The id is printed alone, so that id=$(taskerctl submit -- make) works. With --batch FILE:
    one shell command per line (blank lines and # comments skipped), the options (the group,
    --stashed, --after...) applying to each; their ids are printed as they are accepted. A line
    '@after 1,3 CMD' runs after the batch's first and third commands (see --batch).

    --after and --after-any keep the task waiting for other tasks; --delay and --at keep it
    scheduled until a time; --wait and --follow wait through both. --every and --cron make a
    recurring schedule instead (taskerctl schedule list, schedule rm ID).
    """
    g = settings()
    batch: str | None = opts["batch"]
    follow, wait, stashed = opts["follow"], opts["wait"], opts["stashed"]
    if opts["every"] is not None or opts["cron"] is not None:
        return _add_schedule(command, opts)
    if opts["overlap"] is not None:
        raise click.UsageError("--overlap and --no-overlap go with --every or --cron")
    if stashed and (wait or follow):
        raise click.UsageError("--stashed takes no --wait or --follow: it runs once enqueued")
    if batch is not None:
        if command or wait or follow:
            raise click.UsageError("--batch takes no command, --wait or --follow")
        options = _when_options(opts, _spec_options({**opts, "shell": True}, stdin=False))
        with client() as c, _open(batch) as source:
            return task.submit_batch(c, source, batch, options, as_json=g.json, stashed=stashed)
    _need_command(command, "submit")
    options = _when_options(opts, _spec_options(opts, stdin=follow or wait))
    cancel = not opts["detach_on_interrupt"]
    with client() as c:
        handle = c.submit(task.argv(command, shell=opts["shell"]), stashed=stashed, **options)
        if not (wait or follow):
            if g.json:
                task.dump({"id": handle.id})
            else:
                print(handle.id)
            return 0
        try:
            if not g.json:  # with --follow stdout carries the task's output: the id to stderr
                print(handle.id, file=sys.stderr if follow else sys.stdout, flush=True)
            if follow:
                events = handle.events(output=True)
                return task.watch(
                    c, events, as_json=g.json, cancel_on_interrupt=cancel, task_id=handle.id
                )
            return task.wait_one(c, handle.id, as_json=g.json, cancel_on_interrupt=cancel)
        except KeyboardInterrupt:  # between the answer and the wait: the task is known already
            return task.interrupted(c, handle.id, cancel=cancel)


@cli.command(usage=_COMMAND_LINE, context_settings=_PASS_COMMAND, epilog=_EPILOG)
@_task_options(submit=False)
@global_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(command: tuple[str, ...], **opts: Any) -> int:
    """Run a task at once, bypassing the queue; stream its output; exit with its status.

    Piped standard input is passed to it (see --no-stdin). The task is bound to this call:
    Ctrl-C (or taskerctl going away) cancels it.
    """
    _need_command(command, "run")
    options = _spec_options(opts, stdin=True)
    with client() as c:
        events = c.run_stream(task.argv(command, shell=opts["shell"]), **options)
        return task.watch(c, events, as_json=settings().json, cancel_on_interrupt=True)


# -- looking at tasks ----------------------------------------------------------------------------

_STATE_STYLE = {
    "QUEUED": "cyan",
    "RUNNING": "blue",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "TIMED_OUT": "magenta",
    "CANCELLED": "yellow",
    "LOST": "red",
    "PAUSED": "bright_blue",
    "STASHED": "bright_black",
    "WAITING": "bright_cyan",
    "SCHEDULED": "bright_cyan",
}


def _state(t: TaskResult) -> str:
    style = _STATE_STYLE.get(t.state.name, "white")
    why = f" until {_when(t.enqueue_at)}" if t.enqueue_at is not None else ""
    if held := task.held(t, _at):
        why = f" {held}"  # waiting on 3, 5; scheduled until 14:05:00
    return f"[{style}]{t.state.name.lower()}{why}[/{style}]"


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone().strftime("%H:%M:%S")


def _at(t: datetime | None) -> str:
    """A time to come: its time of day if today, else its date too."""
    if t is None:
        return "-"
    local = t.astimezone()
    same_day = local.date() == datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")


def _origin(t: TaskResult) -> str:
    """Where a task came from: a restart of another, or a schedule."""
    if t.restarted_from is not None:
        return f"restart of {t.restarted_from}"
    return "-" if t.schedule_id is None else f"schedule {t.schedule_id}"


def _submitter(t: TaskResult) -> str:
    """Who submitted a task: its token's name, or "local" (the Unix socket)."""
    return t.submitted_by or "local"


def _elide(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt_seconds(value: float | None) -> str:
    from taskerctl.models import fmt_seconds

    return fmt_seconds(value)


def _duration(r: TaskResult) -> str:
    if r.run is not None:
        return _fmt_seconds(r.run)
    if r.started_at is not None and r.ended_at is None:
        return _fmt_seconds(time.time() - r.started_at.timestamp())
    return "-"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is not cut to 80 columns: tables stay one row per task.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


def _states(values: Sequence[str]) -> list[str]:
    return [s for v in values for s in v.split(",")]


@cli.command("list", usage="[OPTIONS]")
@click.option(
    "-s", "--state", "states", type=STATE, multiple=True, metavar="STATE",
    help="Only tasks in this state (repeatable): queued, running, paused, stashed, waiting, "
    "scheduled, succeeded, failed, timed_out, cancelled, lost.",
)  # fmt: skip
@click.option(
    "-l", "--label", "labels", type=Pair(), multiple=True, metavar="K=V",
    help="Only tasks labelled K=V (repeatable: all of them).",
)  # fmt: skip
@click.option(
    "-n", "--limit", type=Whole(1), default=50, metavar="N",
    help="At most N tasks, the newest (default 50).",
)  # fmt: skip
@group_option("Only tasks of this group.")
@global_options
def list_(
    states: tuple[str, ...], labels: tuple[tuple[str, str], ...], limit: int, group: str | None
) -> None:
    """List tasks, newest first."""
    with client() as c:
        tasks = c.list(states=_states(states), labels=dict(labels), limit=limit + 1, group=group)
    if len(tasks) > limit:
        tasks = tasks[:limit]
        task.note(f"showing the newest {limit} tasks; there are more (--limit N)")
    if settings().json:
        task.dump([task.record(t) for t in tasks])
        return
    from rich.table import Table

    console = _console()
    wide = console.width >= 120  # on a narrow terminal, keep the columns that matter most
    table = Table(box=None, header_style="bold")
    columns = [
        "ID", "STATE", "GROUP", "PRIO", "COMMAND", "LABELS", "FROM", "BY", "QUEUED", "STARTED",
        "ENDED",
    ]  # fmt: skip
    if not wide:
        columns = ["ID", "STATE", "GROUP", "PRIO", "COMMAND", "STARTED"]
    for col in columns:
        elastic = col in ("COMMAND", "LABELS")
        table.add_column(col, no_wrap=True, overflow="ellipsis" if elastic else "fold")
    table.add_column("DURATION", justify="right", no_wrap=True, min_width=8)
    table.add_column("EXIT", justify="right", no_wrap=True)
    for t in tasks:
        exit_ = (
            str(t.exit_code) if t.exit_code is not None else (f"sig{t.signal}" if t.signal else "-")
        )
        cells = {
            "ID": str(t.id),
            "STATE": _state(t),
            "GROUP": t.group,
            "PRIO": t.priority.name.lower(),
            "COMMAND": _elide(t.command, 40 if wide else max(10, console.width - 60)),
            "LABELS": ",".join(f"{k}={v}" for k, v in t.labels.items()),
            "FROM": _origin(t),
            "BY": _submitter(t),
            "QUEUED": _when(t.queued_at),
            "STARTED": _when(t.started_at),
            "ENDED": _when(t.ended_at),
        }
        table.add_row(*(cells[c] for c in columns), _duration(t), exit_, end_section=False)
    console.print(table)


cli.add_command(list_, "ls")

_TIMES = ("queued_at", "started_at", "ended_at", "enqueue_at", "start_at")
#: What ``show`` prints only when there is something to say (``--json`` has them all).
_UNLESS_ABSENT = (
    "enqueue_at", "after", "after_any", "waiting_on", "start_at", "on_finish", "restarted_from",
    "schedule_id", "node",
)  # fmt: skip
_DURATIONS = ("wait", "run", "timeout")


def _show_value(key: str, value: Any) -> str:
    """A record's value as a person reads it: "-" when absent, argv shell-quoted."""
    if value is None or value == "" or value == {}:
        return "-"
    if key == "argv":
        return shlex.join(value)
    if isinstance(value, list):  # ids
        return task.id_list(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in _TIMES:
        return datetime.fromisoformat(value).astimezone().isoformat(timespec="milliseconds")
    if key in _DURATIONS:
        return _fmt_seconds(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    text = str(value)
    if "\n" in text:
        return "\n  " + text.rstrip("\n").replace("\n", "\n  ")
    return text


@cli.command(usage="[OPTIONS] ID")
@click.argument("task_id", type=TaskId(), metavar="ID")
@click.option("-o", "--output", is_flag=True, help="Include its stdout and stderr.")
@global_options
def show(task_id: int, output: bool) -> None:
    """Show one task's full record.

    "-" (null in JSON) stands for what there is not, such as the pid of a task that has not
    started. The argv is shell-quoted. Its dependencies (after), start time (start_at), the
    task it restarts (restarted_from) and its schedule (schedule_id) show when it has them.
    submitted_by names the token that submitted it over TCP, or its Unix user (unix:USER), or
    says "local" (the Unix socket, from a client that did not show its user).
    """
    with client() as c:
        t = c.get(task_id, output=True)  # the truncation flags come with the output
    data = task.record(t, output=output)
    if settings().json:
        task.dump(data)
        return
    data["state"] = t.state.name.lower()
    if held := task.held(t, lambda at: at.astimezone().isoformat(timespec="seconds"), None):
        data["state"] += f" {held}"
    for key in _UNLESS_ABSENT:
        if data[key] in (None, "", [], False):
            del data[key]  # a stashed task's planned enqueue, a restart's original...
    data["submitted_by"] = _submitter(t) if t.submitted_by else "local (the Unix socket)"
    for key, value in data.items():
        print(f"{key:<17} {_show_value(key, value)}")


def _streams(stdout_only: bool, stderr_only: bool) -> tuple[bool, bool]:
    return not stderr_only or stdout_only, not stdout_only or stderr_only


@cli.command(usage="[OPTIONS] ID | -f [ID]", epilog=_EPILOG)
@click.argument("task_id", type=TaskId(), metavar="ID", required=False)
@click.option(
    "-f", "--follow", is_flag=True,
    help="Follow live until it ends (without ID: the newest running task); exit with its status.",
)  # fmt: skip
@click.option("--stdout", "stdout_only", is_flag=True, help="Only its stdout.")
@click.option("--stderr", "stderr_only", is_flag=True, help="Only its stderr.")
@global_options
def logs(task_id: int | None, follow: bool, stdout_only: bool, stderr_only: bool) -> int:
    """Print a task's output.

    Its stdout goes to stdout, its stderr to stderr (with --json, both in one document). The
    daemon keeps the first output_limit bytes of each (1 MiB by default): when it dropped the
    rest, a line on stderr says so. logs -f without an id follows the newest running task (its
    id goes to stderr), as pueue follow does; with none running, it fails.
    """
    if task_id is None and not follow:
        raise click.UsageError("give a task id, or -f to follow the newest running task")
    want_out, want_err = _streams(stdout_only, stderr_only)
    as_json = settings().json
    with client() as c:
        if task_id is None:
            running = c.list(states=["running"], limit=1)  # newest first: one page of one
            if not running:
                raise TaskerError("no task is running")
            task_id = running[0].id
            if not as_json:
                task.note(f"following task {task_id}: {running[0].command}")
        if follow:
            events = c.stream_results([task_id], output=True)
            return task.watch(
                c, events, as_json=as_json, cancel_on_interrupt=False,
                stdout=want_out, stderr=want_err, task_id=task_id,
            )  # fmt: skip
        t = c.get(task_id, output=True)
    if as_json:
        doc: dict[str, Any] = {"id": t.id, "state": t.state.name.lower()}
        for name, wanted in (("stdout", want_out), ("stderr", want_err)):
            if wanted:
                doc[name] = getattr(t, name).decode(errors="replace")
                doc[f"{name}_truncated"] = getattr(t, f"{name}_truncated")
        task.dump(doc)
    else:
        if want_out:
            sys.stdout.buffer.write(t.stdout)
            sys.stdout.flush()
        if want_err:
            sys.stderr.buffer.write(t.stderr)
            sys.stderr.flush()
    task.note_truncated(t, stdout=want_out, stderr=want_err)
    return 0


@cli.command(usage="[OPTIONS] [ID]... [--all] [-g NAME]", epilog=_EPILOG)
@click.argument("task_ids", nargs=-1, type=TaskId(), metavar="ID")
@click.option(
    "--all", "all_", is_flag=True,
    help="Wait for every task live now: queued, running or paused (not stashed ones).",
)  # fmt: skip
@group_option("Wait for every task of this group live now (--all for one group).")
@global_options
def wait(task_ids: tuple[int, ...], all_: bool, group: str | None) -> int:
    """Wait for tasks to end; exit non-zero if any did not succeed.

    A progress bar shows on a terminal. The exit status is the task's for one task, else 1 if
    any did not succeed; each that did not gets a line on stderr. Ctrl-C stops waiting (130),
    and leaves the tasks running. A paused task waited on (or a stashed, waiting or scheduled
    one named by its id) is named on stderr: the wait goes on until it is resumed, enqueued, its
    dependencies end or it is due (or it is cancelled), and it ends. --all and -g do not wait
    for stashed tasks.
    """
    all_ = all_ or group is not None
    if not task_ids and not all_:
        raise click.UsageError("give task ids, --all or -g NAME")
    as_json = settings().json
    progress: Any = None
    done: list[TaskResult] = []
    if sys.stderr.isatty() and not as_json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console(stderr=True),
        )
        bar = progress.add_task("waiting", total=len(set(task_ids)) if task_ids else None)

    def finished(result: TaskResult) -> None:
        done.append(result)
        if progress is not None:
            progress.update(bar, completed=len(done))

    try:
        with client() as c:
            _note_held(c, task_ids, every=all_, group=group)
            if progress is not None:
                progress.start()
            results = c.wait_all(on_result=finished, group=group) if all_ else []
            known = {r.id for r in results}
            rest = [i for i in task_ids if i not in known]  # with --all: those already ended
            results += c.wait_many(rest, on_result=finished) if rest else []
    except KeyboardInterrupt:
        task.note(f"interrupted: {len(done):,} tasks finished meanwhile")
        return task.EXIT_INTERRUPTED
    finally:
        if progress is not None:
            progress.stop()
    if as_json:
        task.dump([task.record(r) for r in results])
    codes = [task.report(r, output_shown=False) for r in results]
    bad = [code for code in codes if code]
    if bad:
        return bad[0] if len(results) == 1 else EXIT_OTHER
    return 0


def _note_held(c: Client, task_ids: Sequence[int], *, every: bool, group: str | None) -> None:
    """Before a wait: name on stderr the tasks waited on that are paused (or stashed, waiting or
    scheduled, if named by id), which end only once resumed, enqueued, their dependencies have
    ended or they are due. One Stats (cheap), and a List only when some are held."""
    s = c.stats(group=group)
    if not (s.paused or (task_ids and (s.stashed or s.waiting or s.scheduled))):
        return
    wanted = set(task_ids)
    states = ["paused", "stashed", "waiting", "scheduled"] if task_ids else ["paused"]
    listed = c.list(states=states, limit=1000, group=group)
    held = [t for t in listed if t.id in wanted or (every and t.state.name == "PAUSED")]
    if len(held) > 3:
        task.note(
            f"{len(held):,} of the tasks waited on are held (paused, stashed, waiting or "
            "scheduled): the wait ends once they are resumed, enqueued or due, and end"
        )
        return
    for t in held:
        task.note_state(t.id, t.state, task.held(t, _at))


# -- changing tasks ------------------------------------------------------------------------------


@cli.command(usage="[OPTIONS] [ID]... [--all | -g NAME | --label K=V | --state STATE]")
@click.argument("task_ids", nargs=-1, type=TaskId(), metavar="ID")
@click.option("--all", "all_", is_flag=True, help="Also cancel every live task.")
@group_option("Also cancel the live tasks of this group (with --label, --state: those of them).")
@click.option(
    "-l", "--label", "labels", type=Pair(), multiple=True, metavar="K=V",
    help="Also cancel the live tasks labelled K=V (repeatable: all of them).",
)  # fmt: skip
@click.option(
    "-s", "--state", "states", type=LIVE_STATE, multiple=True, metavar="STATE",
    help="Also cancel the tasks in this state: queued, running, paused or stashed (repeatable).",
)  # fmt: skip
@global_options
def cancel(
    task_ids: tuple[int, ...],
    all_: bool,
    group: str | None,
    labels: tuple[tuple[str, str], ...],
    states: tuple[str, ...],
) -> None:
    """Cancel tasks, all in one request.

    Live tasks are queued, running, paused or stashed. The queued (and stashed) ones leave the
    queue before any running one gets SIGTERM (then SIGKILL), so that none of them starts
    meanwhile. An unknown id cancels nothing.
    """
    selecting = all_ or bool(labels) or bool(states) or group is not None
    if not task_ids and not selecting:
        raise click.UsageError("give task ids, or select with --all, -g, --label or --state")
    with client() as c:
        cancelled = c.cancel_many(
            task_ids, all=all_, labels=dict(labels), states=_states(states), group=group
        )
    results = list(cancelled.items())
    if settings().json:
        task.dump([{"id": i, "cancelled": done} for i, done in results])
        return
    for i, done in results:
        print(f"{i} cancelled" if done else f"{i} already finished")
    if not results:
        task.note("no queued or running task matched")


def _say(doc: object, *lines: str) -> None:
    """A command's outcome: ``doc`` as its JSON document with --json, else ``lines``."""
    if settings().json:
        task.dump(doc)
    else:
        for line in lines:
            print(line)


def _ids_and_groups(task_ids: Sequence[int], groups: Sequence[str], all_: bool, verb: str) -> None:
    if not (task_ids or groups or all_):
        raise click.UsageError(f"give task ids, -g NAME or --all to {verb}")


def _said(verb: str, task_ids: Sequence[int], groups: Sequence[str], all_: bool) -> None:
    """What pause or resume did: the groups, then each task."""
    lines = [f"every group {verb}"] if all_ else []
    lines += [f"group {name} {verb}" for name in groups] + [f"{i} {verb}" for i in task_ids]
    _say({verb: list(task_ids)}, *lines)


@cli.command(usage="[OPTIONS] [ID]... [-g NAME]... [--all] [--wait]")
@click.argument("task_ids", nargs=-1, type=TaskId(), metavar="ID")
@group_option("Pause this group (repeatable): it starts no task until resumed.", many=True)
@click.option("--all", "all_", is_flag=True, help="Pause every group.")
@click.option(
    "--wait", is_flag=True,
    help="Let the paused groups' running tasks finish, rather than pause them too.",
)  # fmt: skip
@global_options
def pause(task_ids: tuple[int, ...], groups: tuple[str, ...], all_: bool, wait: bool) -> None:
    """Pause running tasks, and groups.

    A paused task is stopped (SIGSTOP to its processes) and PAUSED, its timeout clock stopped,
    until resumed. A paused group starts no task, and its running tasks are paused too unless
    --wait; its queued tasks stay queued. Pausing a task that is not running fails (to hold back
    queued tasks, pause their group; or submit them --stashed). Prints what was paused.
    """
    _ids_and_groups(task_ids, groups, all_, "pause")
    if wait and not (groups or all_):
        raise click.UsageError("--wait goes with -g NAME or --all")
    with client() as c:
        paused = c.pause(task_ids, groups=groups, all=all_, wait=wait)
    _said("paused", paused, groups, all_)


@cli.command(usage="[OPTIONS] [ID]... [-g NAME]... [--all]")
@click.argument("task_ids", nargs=-1, type=TaskId(), metavar="ID")
@group_option("Resume this group (repeatable), and its paused tasks.", many=True)
@click.option("--all", "all_", is_flag=True, help="Resume every group and every paused task.")
@global_options
def resume(task_ids: tuple[int, ...], groups: tuple[str, ...], all_: bool) -> None:
    """Resume paused tasks, and groups.

    A resumed task gets SIGCONT and is running again; a resumed group starts tasks again.
    Resuming a task of a paused group resumes that task only. Prints what was resumed.
    """
    _ids_and_groups(task_ids, groups, all_, "resume")
    with client() as c:
        resumed = c.resume(task_ids, groups=groups, all=all_)
    _said("resumed", resumed, groups, all_)


@cli.command(usage="[OPTIONS] ID... LEVEL")
@click.argument("task_ids", nargs=-1, required=True, type=TaskId(), metavar="ID")
@click.argument("level", type=PRIORITY, metavar="LEVEL")
@global_options
def priority(task_ids: tuple[int, ...], level: str) -> None:
    """Give queued or stashed tasks a new priority: low, normal, high or critical.

    Each keeps its place by submission time: it is ordered as if it had been submitted at the
    new level at its original time. Nothing changes if any task is running or finished.
    """
    with client() as c:
        c.set_priority(task_ids, level)
    ids = list(dict.fromkeys(task_ids))
    _say({"ids": ids, "priority": level}, *(f"{i} priority {level}" for i in ids))


@cli.command(usage="[OPTIONS] ID... [--delay DUR]")
@click.argument("task_ids", nargs=-1, required=True, type=TaskId(), metavar="ID")
@click.option(
    "--delay", type=Duration(), metavar="DUR",
    help="Queue them this long from now (they stay stashed until then, across restarts).",
)  # fmt: skip
@global_options
def enqueue(task_ids: tuple[int, ...], delay: float | None) -> None:
    """Queue stashed tasks (submit --stashed), at once or after --delay.

    Nothing changes if any task is not stashed.
    """
    with client() as c:
        c.enqueue(task_ids, delay=delay)
    ids = list(dict.fromkeys(task_ids))
    after = f" in {_fmt_seconds(delay)}" if delay else ""
    _say({"enqueued": ids, "delay": delay}, *(f"{i} enqueued{after}" for i in ids))


@cli.command(usage="[OPTIONS] ID...")
@click.argument("task_ids", nargs=-1, required=True, type=TaskId(), metavar="ID")
@global_options
def remove(task_ids: tuple[int, ...]) -> None:
    """Delete finished tasks from the journal.

    Nothing is removed if any task has not ended (cancel it first). clean removes every
    finished task.
    """
    with client() as c:
        removed = c.remove(task_ids)
    _say({"removed": removed}, f"removed {removed}")


@cli.command(usage="[OPTIONS] ID SIGNAL")
@click.argument("task_id", type=TaskId(), metavar="ID")
@click.argument("signal_name", metavar="SIGNAL")
@global_options
def signal(task_id: int, signal_name: str) -> None:
    """Send a signal to every process of a running (or paused) task.

    SIGNAL is a name, with or without SIG (TERM, SIGUSR1, hup), or a number (9).
    """
    with client() as c:
        c.signal(task_id, signal_name)
    _say({"id": task_id, "signal": signal_name}, f"{task_id} sent {signal_name}")


@cli.command(usage="[OPTIONS]")
@click.option(
    "--older-than", type=Duration(), metavar="DUR",
    help="Only tasks that ended at least this long ago (default: every finished task).",
)  # fmt: skip
@global_options
def clean(older_than: float | None) -> None:
    """Remove finished tasks from the journal."""
    with client() as c:
        removed = c.clean(older_than)
    _say({"removed": removed}, f"removed {removed}")


# -- workflows -----------------------------------------------------------------------------------


def _edit_command(t: TaskResult) -> list[str]:
    """Open the task's command in $EDITOR (a shell task's script as it is, else its argv
    shell-quoted); the argv read back. Unchanged or empty: nothing is done (an error)."""
    from taskerctl.models import command_words

    script = t.shell and len(t.argv) == 1
    before = t.command
    import tempfile  # only here: 5 ms of every command's start

    fd, path = tempfile.mkstemp(prefix=f"taskerctl-{t.id}-", suffix=".sh" if script else ".txt")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(before + "\n")
        click.edit(filename=path, editor=os.environ.get("EDITOR") or None)
        with open(path) as fh:
            after = fh.read()
    finally:
        os.unlink(path)
    if after.strip() == before.strip():
        raise TaskerError(f"the command of task {t.id} was not changed: nothing done")
    try:
        words = command_words(after, script=script)
    except ValueError as err:
        raise click.UsageError(f"the edited command of task {t.id}: {err}") from None
    if not words:
        raise TaskerError(f"the command of task {t.id} was left empty: nothing done")
    return words


def _listing(
    docs: list[dict[str, Any]],
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Collection[str],
) -> None:
    """A list command's output: ``docs`` as one JSON document with --json, else ``rows`` as a
    table under ``header`` (the ``right`` columns justified right)."""
    if settings().json:
        task.dump(docs)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in header:
        table.add_column(col, no_wrap=True, justify="right" if col in right else "left")
    for row in rows:
        table.add_row(*row)
    _console().print(table)


@cli.command(usage="[OPTIONS] [ID]... [--failed] [--edit]")
@click.argument("task_ids", nargs=-1, type=TaskId(), metavar="ID")
@click.option(
    "--failed", is_flag=True, help="Also every task that ended FAILED (still in the journal)."
)
@click.option(
    "--edit", is_flag=True,
    help="First edit each one's command in $EDITOR (an unchanged or empty one: nothing done).",
)  # fmt: skip
@global_options
def restart(task_ids: tuple[int, ...], failed: bool, edit: bool) -> None:
    """Run finished tasks again, as new tasks; print their ids.

    Each new task has the original's spec (command, environment, directory, group, labels,
    limits, on-finish...; not its dependencies or start time) and names it (restarted_from).
    Nothing is submitted if any is unfinished. With --edit, each command opens in $EDITOR
    (a shell task's script as it is, else its words shell-quoted) and the new task runs it.
    """
    if not task_ids and not failed:
        raise click.UsageError("give task ids, or --failed")
    if edit and (failed or not task_ids):
        raise click.UsageError("--edit goes with task ids, not --failed")
    ids = list(dict.fromkeys(task_ids))
    with client() as c:
        specs = [{"argv": _edit_command(c.get(i))} for i in ids] if edit else None
        new = [h.id for h in c.restart(ids, failed=failed, specs=specs)]
    _say({"ids": new}, *(str(i) for i in new))


def _edit_fields(c: Client, task_id: int, words: Sequence[str], opts: dict[str, Any]) -> Any:
    """The ``Client.edit`` keywords of ``taskerctl edit``'s options."""
    fields: dict[str, Any] = {}
    for key in ("priority", "timeout", "queue_timeout", "retries", "max_requeues", "on_finish"):
        if opts[key] is not None:
            fields[key] = opts[key]
    if opts["cwd"] is not None:
        fields["cwd"] = os.path.abspath(opts["cwd"])
    if opts["env"]:
        fields["env"] = {**os.environ, **dict(opts["env"])}
    if opts["labels"]:
        fields["labels"] = dict(opts["labels"])
    shell: bool | None = opts["shell"]
    if shell is not None:
        fields["shell"] = shell
    line: str | None = opts["line"]
    if line is not None and words:
        raise click.UsageError("give --command or a command after --, not both")
    if line is not None or words:
        if shell is None:  # a shell task's script stays a script
            t = c.get(task_id)
            shell = t.shell and len(t.argv) == 1
        try:
            argv = [line] if shell and line is not None else shlex.split(line or "")
        except ValueError as err:
            raise click.UsageError(f"--command: {err}") from None
        fields["argv"] = task.argv(words or argv, shell=bool(shell))
        if not fields["argv"]:
            raise click.UsageError("the new command is empty")
    if not fields:
        fields["argv"] = _edit_command(c.get(task_id))
    return fields


@cli.command(usage="[OPTIONS] ID [-- COMMAND [ARG]...]")
@click.argument("task_id", type=TaskId(), metavar="ID")
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="COMMAND")
@click.option(
    "--command", "line", metavar="CMD",
    help="Its new command line: shell words (or, for a shell task, the script).",
)  # fmt: skip
@click.option("-p", "--priority", type=PRIORITY, metavar="PRIO", help="Its new priority.")
@click.option(
    "-t", "--timeout", type=Duration(positive=True), metavar="DUR", help="Its new timeout."
)
@click.option(
    "--queue-timeout", type=Duration(positive=True), metavar="DUR",
    help="Its new queue timeout.",
)  # fmt: skip
@click.option("--retries", type=Whole(), metavar="N", help="Its new retries.")
@click.option("--max-requeues", type=Whole(), metavar="N", help="Its new max requeues.")
@click.option(
    "-e", "--env", "env", type=Pair(), multiple=True, metavar="K=V",
    help="Replace its environment with yours plus K=V (repeatable), as submit -e makes it.",
)  # fmt: skip
@click.option("--cwd", metavar="DIR", help="Its new working directory.")
@click.option(
    "-l", "--label", "labels", type=Pair(), multiple=True, metavar="K=V",
    help="Replace its labels with these (repeatable).",
)  # fmt: skip
@click.option(
    "--shell/--no-shell", default=None,
    help="Run its command by /bin/sh -c (the words joined), or not.",
)  # fmt: skip
@click.option("--on-finish", metavar="CMD", help="Its new on-finish command ('' for none).")
@global_options
def edit(task_id: int, words: tuple[str, ...], **opts: Any) -> None:
    """Change a task that has not started: queued, stashed, waiting or scheduled.

    Each option given replaces that field; the task keeps its id and its place in the queue.
    The new command comes after -- (taskerctl edit 7 -- make -j4) or as --command 'make -j4';
    with no option at all, its command opens in $EDITOR, as restart --edit. A running or
    finished task cannot be changed (restart it instead).
    """
    with client() as c:
        fields = _edit_fields(c, task_id, words, opts)
        t = c.edit(task_id, **fields)
    _say(task.record(t), f"{t.id} edited: {', '.join(fields)}")


@cli.group("schedule", cls=Group, usage="[OPTIONS] COMMAND")
@click.pass_context
def schedule(ctx: click.Context) -> None:
    """Recurring schedules: submit --every DUR or --cron EXPR makes one."""
    _help_if_bare(ctx)


def _schedule_row(s: Schedule) -> tuple[str, ...]:
    last = "-" if s.last_task_id is None else str(s.last_task_id)
    when = s.when + ("" if s.overlap else ", no overlap")
    row = (s.command, when, _at(s.next_at), last, str(s.submitted), str(s.skipped))
    return (str(s.id), *row)


@schedule.command("list", usage="[OPTIONS]")
@global_options
def schedule_list() -> None:
    """List the schedules.

    Each with its command, period, next occurrence and last task, and how many occurrences
    were submitted, and skipped while the previous one had not ended.
    """
    with client() as c:
        found = c.schedules()
    header = ("ID", "COMMAND", "WHEN", "NEXT", "LAST TASK", "SUBMITTED", "SKIPPED")
    rows = [_schedule_row(s) for s in found]
    _listing([s.to_json() for s in found], header, rows, right=("ID", *header[4:]))


schedule.add_command(schedule_list, "ls")


@schedule.command("rm", usage="[OPTIONS] ID")
@click.argument("schedule_id", type=TaskId("schedule"), metavar="ID")
@global_options
def schedule_rm(schedule_id: int) -> None:
    """Remove a schedule; the tasks it submitted stay."""
    with client() as c:
        c.remove_schedule(schedule_id)
    _say({"removed": schedule_id}, f"schedule {schedule_id} removed")


schedule.add_command(schedule_rm, "remove")


# -- groups --------------------------------------------------------------------------------------


@cli.group("group", cls=Group, usage="[OPTIONS] COMMAND")
@click.pass_context
def group_(ctx: click.Context) -> None:
    """Groups: named queues, each with its own slots (default always exists)."""
    _help_if_bare(ctx)


def _slots(g: TaskGroup) -> str:
    return f"parallel {g.parallel}, max {g.max_parallel}"


@group_.command("add", usage="[OPTIONS] NAME")
@click.argument("name")
@click.option("--parallel", type=Whole(1), metavar="N", help="Its slots (default 1).")
@click.option(
    "--max-parallel", type=Whole(1), metavar="M",
    help="Burst up to M slots when tasks arrive faster than it drains them (default: N).",
)  # fmt: skip
@global_options
def group_add(name: str, parallel: int | None, max_parallel: int | None) -> None:
    """Create a group; submit -g NAME queues tasks in it.

    NAME is 1 to 64 letters, digits, '-', '_' and '.'.
    """
    with client() as c:
        g = c.add_group(name, parallel=parallel, max_parallel=max_parallel)
    _say(g.to_json(), f"group {g.name} added: {_slots(g)}")


@group_.command("rm", usage="[OPTIONS] NAME")
@click.argument("name")
@click.option("--force", is_flag=True, help="Cancel its unfinished tasks first.")
@global_options
def group_rm(name: str, force: bool) -> None:
    """Remove a group; refused while it holds unfinished tasks, unless --force.

    The group default cannot be removed.
    """
    with client() as c:
        cancelled = c.remove_group(name, force=force)
    also = f", {cancelled} tasks cancelled" if cancelled else ""
    _say({"removed": name, "cancelled": cancelled}, f"group {name} removed{also}")


group_.add_command(group_rm, "remove")


@group_.command("list", usage="[OPTIONS]")
@global_options
def group_list() -> None:
    """List the groups: their slots, their tasks now, and whether they are paused."""
    with client() as c:
        groups = c.groups()
    rows = []
    for g in groups:
        paused = "[bright_blue]yes[/]" if g.paused else "no"
        if g.paused_tasks:
            paused += f" ({g.paused_tasks} task{'' if g.paused_tasks == 1 else 's'})"
        row = (g.parallel, g.max_parallel, g.running, g.queued, paused, g.stashed)
        rows.append((g.name, *(str(v) for v in row)))
    header = ("NAME", "PARALLEL", "MAX", "RUNNING", "QUEUED", "PAUSED", "STASHED")
    _listing([g.to_json() for g in groups], header, rows, right=header[1:])


group_.add_command(group_list, "ls")


@cli.command(usage="[OPTIONS] N [-g NAME] [--max-parallel M]")
@click.argument("parallel", type=Whole(1), metavar="N")
@group_option("The group (default: default).")
@click.option(
    "--max-parallel", type=Whole(1), metavar="M",
    help="Its new burst ceiling (default: unchanged, raised to N if below it).",
)  # fmt: skip
@global_options
def parallel(parallel: int, group: str | None, max_parallel: int | None) -> None:
    """Change a group's slots now.

    Lowering them never stops a running task: the extra slots retire as their tasks finish.
    """
    with client() as c:
        g = c.set_parallel(parallel, group=group, max_parallel=max_parallel)
    _say(g.to_json(), f"group {g.name}: {_slots(g)}")


# -- the daemon ----------------------------------------------------------------------------------


def _stats_table(s: Stats) -> Any:
    from rich.table import Table

    t = Table(box=None, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    workers = f"{s.active_workers} active ({s.burst_workers} burst)"
    queued = (
        f"{s.queued} / {s.queue_capacity} ({s.queue_usage:.0%}): critical {s.queued_critical}, "
        f"high {s.queued_high}, normal {s.queued_normal}, low {s.queued_low}"
    )
    finished = (
        f"[green]{s.succeeded} succeeded[/], [red]{s.failed} failed[/], "
        f"{s.timed_out} timed out, {s.cancelled} cancelled, {s.lost} lost"
    )
    rows = [
        ("workers", f"{workers}, base {s.base_workers}, max {s.max_workers}"),
        ("running", f"{s.running}, paused {s.paused}"),
        ("queued", queued),
        ("stashed", str(s.stashed)),
        ("waiting", f"{s.waiting}, scheduled {s.scheduled}"),
        ("finished", finished),
        ("rejected", str(s.rejected)),
        ("uptime", _fmt_seconds(s.uptime)),
        ("version", s.version + (" (shutting down)" if s.shutting_down else "")),
    ]
    rows += [(f"group {g.name}", _group_stats(g)) for g in s.groups]
    rows += [(f"node {n.name}", f"{n.slots} slots, {n.address}") for n in s.nodes]
    for row in rows:
        t.add_row(*row)
    return t


def _group_stats(g: TaskGroup) -> str:
    return (
        f"{_slots(g)}, workers {g.workers} ({g.burst_workers} burst), running {g.running}, "
        f"queued {g.queued}/{g.max_queue}, paused {g.paused_tasks}, stashed {g.stashed}, "
        f"in {g.arrival_rate:.1f}/s, out {g.drain_rate:.1f}/s"
        + (" [bright_blue](paused)[/]" if g.paused else "")
    )


def _stats_line(s: Stats) -> str:
    """``stats --watch`` without a terminal: one line per interval."""
    return (
        f"{datetime.now().strftime('%H:%M:%S')} running {s.running}, paused {s.paused}, "
        f"queued {s.queued}/{s.queue_capacity}, stashed {s.stashed}, waiting {s.waiting}, "
        f"scheduled {s.scheduled}, workers {s.active_workers} "
        f"({s.burst_workers} burst), succeeded {s.succeeded}, failed {s.failed}, "
        f"timed out {s.timed_out}, cancelled {s.cancelled}, lost {s.lost}, "
        f"rejected {s.rejected}" + (", shutting down" if s.shutting_down else "")
    )


@cli.command(usage="[OPTIONS]")
@click.option(
    "-w", "--watch", is_flag=True,
    help="Refresh until Ctrl-C: live on a terminal, else a line per interval (with --json, a "
    "document per line).",
)  # fmt: skip
@click.option(
    "--interval", type=Duration(positive=True), default="1s", metavar="DUR",
    help="How often --watch refreshes (default 1s).",
)  # fmt: skip
@group_option("Only this group's workers, queue and counts.")
@global_options
def stats(watch: bool, interval: float, group: str | None) -> None:
    """Workers, queue and counts right now, in all and per group."""
    as_json = settings().json
    with client() as c:
        if not watch:
            s = c.stats(group=group)
            if as_json:
                task.dump(s.to_json())
            else:
                _console().print(_stats_table(s))
            return
        try:
            if as_json or not sys.stdout.isatty():
                while True:
                    s = c.stats(group=group)
                    if as_json:
                        task.dump(s.to_json(), compact=True)
                    else:
                        print(_stats_line(s), flush=True)
                    time.sleep(interval)
            from rich.live import Live

            with Live(
                _stats_table(c.stats(group=group)), console=_console(), auto_refresh=False
            ) as live:
                while True:
                    time.sleep(interval)
                    live.update(_stats_table(c.stats(group=group)), refresh=True)
        except KeyboardInterrupt:
            pass


@cli.command(usage="[OPTIONS]")
@group_option("Only this group's rates, latencies and totals.")
@global_options
def metrics(group: str | None) -> None:
    """Rates, latencies and totals since the daemon started."""
    with client() as c:
        m = c.metrics(group=group)
    if settings().json:
        task.dump(m.to_json())
        return
    for key, value in m.to_json().items():
        if key.endswith("_rate") and "success" not in key and "failure" not in key:
            text = f"{value:.2f}/s"
        elif key.endswith("_rate"):
            text = f"{value:.1%}"
        elif isinstance(value, float) or value is None:
            text = _fmt_seconds(value)
        else:
            text = str(value)
        print(f"{key:<16} {text}")


@cli.group(cls=Group, usage="[OPTIONS] COMMAND")
@click.pass_context
def daemon(ctx: click.Context) -> None:
    """Status and shutdown of the daemon."""
    _help_if_bare(ctx)


@daemon.command("status", usage="[OPTIONS]")
@global_options
def daemon_status() -> None:
    """Is the daemon up? Exit 0 if so, 69 if not."""
    as_json = settings().json
    with client() as c:
        try:
            s = c.stats()
        except DaemonUnavailable:
            if as_json:
                task.dump({"socket": str(c.socket), "up": False})
            raise
    if as_json:
        task.dump({"socket": str(c.socket), "up": True, **s.to_json()})
        return
    print(
        f"taskerd {s.version} running on {c.socket}: up {_fmt_seconds(s.uptime)}, "
        f"{s.running} running, {s.queued} queued" + (", shutting down" if s.shutting_down else "")
    )


def _shutdown(mode: str) -> None:
    with client() as c:
        c.shutdown(mode)
    if settings().json:
        task.dump({"shutdown": mode})
    else:
        print(f"taskerd: {mode} requested")


@daemon.command("stop", usage="[OPTIONS]")
@global_options
def daemon_stop() -> None:
    """Stop accepting; running tasks get stop_timeout; queued ones stay for the next start."""
    _shutdown("stop")


@daemon.command("drain", usage="[OPTIONS]")
@global_options
def daemon_drain() -> None:
    """Stop accepting, finish everything queued, then exit."""
    _shutdown("drain")


@daemon.command("kill", usage="[OPTIONS]")
@global_options
def daemon_kill() -> None:
    """Cancel running and queued tasks at once, then exit."""
    _shutdown("kill")


@cli.command(usage="[OPTIONS]")
@click.option(
    "--bind", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
    help="Where to serve the page; off loopback, a token is required.",
)  # fmt: skip
@click.option("--open", "open_", is_flag=True, help="Open the page in a web browser.")
@click.option(
    "--token", metavar="TOKEN", envvar="TASKER_DASHBOARD_TOKEN",
    help="The dashboard's own token, which the browser must send (default: "
    "$TASKER_DASHBOARD_TOKEN).",
)  # fmt: skip
@click.option("--web-token-file", metavar="FILE", help="Read the dashboard's token from FILE.")
@global_options
def dashboard(bind: str, open_: bool, token: str | None, web_token_file: str | None) -> None:
    """Serve a live web dashboard of the queue (needs tasker[dashboard]).

    The page shows workers, queues, throughput, a chart and the tasks, live; follows a task's
    output; and cancels, restarts, pauses, resumes, reprioritizes and submits. It reaches the
    daemon as taskerctl does (--socket, or --address with TLS and --token-file).
    """
    from taskerctl._core import read_token
    from taskerctl.dashboard import serve

    serve(
        bind, open_browser=open_,
        token=read_token(web_token_file) if web_token_file else token, client=where_to(),
    )  # fmt: skip


# -- running it ------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run_app(args: Sequence[str]) -> int:
    """Run ``taskerctl`` with ``args``; every error becomes one ``taskerctl: error:`` line on
    stderr and an exit status, never a traceback."""
    try:
        rv = cli.main(list(args), prog_name="taskerctl", standalone_mode=False)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx is not None else "taskerctl"
        message = f"{_one_line(err.format_message())} (see '{where} --help')"
        print(f"taskerctl: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except click.ClickException as err:
        print(f"taskerctl: error: {_one_line(err.format_message())}", file=sys.stderr)
        return err.exit_code
    except TaskerError as err:
        print(f"taskerctl: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except (click.Abort, KeyboardInterrupt):
        return task.EXIT_INTERRUPTED
    except Exception as err:  # a bug, or an error of the system: one line all the same
        print(f"taskerctl: error: {type(err).__name__}: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_OTHER
    return rv if isinstance(rv, int) else 0

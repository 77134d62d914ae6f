"""The full ``taskerctl`` CLI (typer + rich). ``submit`` and ``run`` are pass-throughs to
:mod:`taskerctl._submit`, which owns their options."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from typer._click import exceptions as click_exc

from taskerctl import __version__, _submit
from taskerctl._sync import Client
from taskerctl.errors import EXIT_OTHER, EXIT_USAGE, TaskerError
from taskerctl.models import (
    STATE_NAMES,
    Metrics,
    Stats,
    TaskResult,
    TaskState,
    fmt_seconds,
    to_seconds,
)

_GLOBAL = {o.dest: o for o in _submit.GLOBAL_OPTIONS}
_PASS_THROUGH = {
    "ignore_unknown_options": True,
    "allow_extra_args": True,
    "allow_interspersed_args": False,
    "help_option_names": [],
}

app = typer.Typer(
    name="taskerctl",
    help="Submit, watch and manage tasks of the Tasker daemon (taskerd).",
    epilog=_submit.EXIT_CODES_HELP.replace("\n", " "),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
daemon_app = typer.Typer(help="Status and shutdown of the daemon.", no_args_is_help=True)
app.add_typer(daemon_app, name="daemon")


@dataclass
class Globals:
    """Options given before the command."""

    socket: str | None
    json: bool


def _version(value: bool) -> None:
    if value:
        print(f"taskerctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    socket: Annotated[
        str | None,
        typer.Option(
            "--socket", envvar="TASKER_SOCKET", help=_GLOBAL["socket"].help, metavar="PATH"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=_GLOBAL["json"].help)] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    ctx.obj = Globals(socket, as_json)


JsonOpt = Annotated[bool, typer.Option("--json", help=_GLOBAL["json"].help)]


def _g(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


@contextmanager
def _client(ctx: typer.Context) -> Iterator[Client]:
    with Client(_g(ctx).socket) as client:
        yield client


def _json_wanted(ctx: typer.Context, local: bool) -> bool:
    return local or _g(ctx).json


def _dump(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def _pass_through(ctx: typer.Context, command: str) -> None:
    g = _g(ctx)
    globals_: dict[str, Any] = {"json": g.json} if g.json else {}
    if g.socket:
        globals_["socket"] = g.socket
    raise typer.Exit(_submit.main(command, ctx.args, globals_))


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def submit(ctx: typer.Context) -> None:
    """Submit a task (or --batch FILE); print its id. See `taskerctl submit --help`."""
    _pass_through(ctx, "submit")


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def run(ctx: typer.Context) -> None:
    """Run a task at once, bypassing the queue; stream it; exit with its status."""
    _pass_through(ctx, "run")


# -- formatting --------------------------------------------------------------------------------

_STATE_STYLE = {
    "QUEUED": "cyan",
    "RUNNING": "blue",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "TIMED_OUT": "magenta",
    "CANCELLED": "yellow",
    "LOST": "red",
}


def _state(state: TaskState) -> str:
    style = _STATE_STYLE.get(state.name, "white")
    return f"[{style}]{state.name.lower()}[/{style}]"


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone().strftime("%H:%M:%S")


def _elide(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _duration(r: TaskResult) -> str:
    if r.run is not None:
        return fmt_seconds(r.run)
    if r.started_at is not None and r.ended_at is None:
        return fmt_seconds(time.time() - r.started_at.timestamp())
    return "-"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output is not cut to 80 columns: tables stay one row per task.
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


# -- commands ----------------------------------------------------------------------------------


def _pairs(items: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"invalid label {item!r}: use K=V")
        out[key] = value
    return out


@app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[
        list[str] | None,
        typer.Option("--state", "-s", help=f"Only these states ({', '.join(STATE_NAMES)})."),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="Only tasks with K=V.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first."""
    try:
        states = [s for arg in state or () for s in arg.split(",")]
        with _client(ctx) as client:
            tasks = client.list(states=states, labels=_pairs(label), limit=limit)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if _json_wanted(ctx, as_json):
        _dump([t.to_json() for t in tasks])
        return
    from rich.table import Table

    console = _console()
    wide = console.width >= 120  # on a narrow terminal, keep the columns that matter most
    table = Table(box=None, header_style="bold")
    columns = ["ID", "STATE", "PRIO", "COMMAND", "LABELS", "QUEUED", "STARTED", "ENDED"]
    if not wide:
        columns = ["ID", "STATE", "PRIO", "COMMAND", "STARTED"]
    for col in columns:
        elastic = col in ("COMMAND", "LABELS")
        table.add_column(
            col,
            no_wrap=True,
            overflow="ellipsis" if elastic else "fold",
        )
    table.add_column("DURATION", justify="right", no_wrap=True, min_width=8)
    table.add_column("EXIT", justify="right", no_wrap=True)
    for t in tasks:
        exit_ = (
            str(t.exit_code) if t.exit_code is not None else (f"sig{t.signal}" if t.signal else "-")
        )
        cells = {
            "ID": str(t.id),
            "STATE": _state(t.state),
            "PRIO": t.priority.name.lower(),
            "COMMAND": _elide(t.command, 40 if wide else max(10, console.width - 60)),
            "LABELS": ",".join(f"{k}={v}" for k, v in t.labels.items()),
            "QUEUED": _when(t.queued_at),
            "STARTED": _when(t.started_at),
            "ENDED": _when(t.ended_at),
        }
        table.add_row(*(cells[c] for c in columns), _duration(t), exit_, end_section=False)
    console.print(table)


app.command("ls", help="Alias of list.")(list_)


@app.command()
def show(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(metavar="ID")],
    output: Annotated[bool, typer.Option("--output", "-o", help="Include stdout/stderr.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show one task's full record."""
    with _client(ctx) as client:
        t = client.get(task_id, output=output)
    data = t.to_json(output=output)
    if _json_wanted(ctx, as_json):
        _dump(data)
        return
    for key, value in data.items():
        if key in ("queued_at", "started_at", "ended_at") and value:
            value = datetime.fromisoformat(value).astimezone().isoformat(timespec="milliseconds")
        elif key in ("wait", "run", "timeout"):
            value = fmt_seconds(value)
        elif key == "state":
            value = t.state.name.lower()
        elif isinstance(value, str) and "\n" in value:
            value = "\n  " + value.rstrip("\n").replace("\n", "\n  ")
        print(f"{key:<17} {value}")


@app.command()
def logs(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(metavar="ID")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until it ends.")] = False,
    stdout_only: Annotated[bool, typer.Option("--stdout", help="Only stdout.")] = False,
    stderr_only: Annotated[bool, typer.Option("--stderr", help="Only stderr.")] = False,
) -> None:
    """Print a task's output (stdout to stdout, stderr to stderr)."""
    want_out, want_err = not stderr_only or stdout_only, not stdout_only or stderr_only
    with _client(ctx) as client:
        if follow:
            _submit.follow(
                client.stream_results([task_id], output=True), stdout=want_out, stderr=want_err
            )
            return
        t = client.get(task_id, output=True)
    if want_out:
        sys.stdout.buffer.write(t.stdout)
        sys.stdout.flush()
    if want_err:
        sys.stderr.buffer.write(t.stderr)
        sys.stderr.flush()


@app.command()
def wait(
    ctx: typer.Context,
    task_ids: Annotated[list[int] | None, typer.Argument(metavar="ID...")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Wait for every queued or running task.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Wait for tasks to finish; exit non-zero if any did not succeed (its status, for one)."""
    ids = list(task_ids or ())
    with _client(ctx) as client:
        if all_:
            ids += [t.id for t in client.list(states=["queued", "running"], limit=100_000)]
        if not ids:
            if all_:
                return
            raise typer.BadParameter("give task ids or --all")
        for i in ids:  # fail fast on unknown ids, which the stream would not report
            client.get(i)
        results: dict[int, TaskResult] = {}
        show = sys.stderr.isatty() and not _json_wanted(ctx, as_json)
        progress: Any = None
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=_console(stderr=True),
            )
            progress.start()
            bar = progress.add_task("waiting", total=len(ids))
        try:
            for ev in client.stream_results(ids, finished_only=True):
                if ev.kind == "finished" and ev.result is not None:
                    results[ev.task_id] = ev.result
                    if progress is not None:
                        progress.update(bar, completed=len(results))
        finally:
            if progress is not None:
                progress.stop()
    done = [results[i] for i in ids if i in results]
    if _json_wanted(ctx, as_json):
        _dump([r.to_json() for r in done])
    else:
        for r in done:
            if not r.ok:
                print(f"task {r.id} {r.describe()}", file=sys.stderr)
    bad = [r for r in done if not r.ok]
    if len(done) < len(set(ids)):
        raise TaskerError("event stream ended before all tasks finished")
    if bad:
        raise typer.Exit(bad[0].exit_status if len(set(ids)) == 1 else EXIT_OTHER)


@app.command()
def cancel(
    ctx: typer.Context, task_ids: Annotated[list[int], typer.Argument(metavar="ID...")]
) -> None:
    """Cancel tasks, all in one step: the queued ones leave the queue first, then the running
    ones get SIGTERM, then SIGKILL. An unknown id cancels nothing."""
    with _client(ctx) as client:
        cancelled = client.cancel_many(task_ids)
    for i in dict.fromkeys(task_ids):
        print(f"{i} cancelled" if cancelled.get(i) else f"{i} already finished")


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
        ("running", str(s.running)),
        ("queued", queued),
        ("finished", finished),
        ("rejected", str(s.rejected)),
        ("uptime", fmt_seconds(s.uptime)),
        ("version", s.version + (" (shutting down)" if s.shutting_down else "")),
    ]
    for row in rows:
        t.add_row(*row)
    return t


@app.command()
def stats(
    ctx: typer.Context,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh live until Ctrl-C.")
    ] = False,
    interval: Annotated[str, typer.Option("--interval", help="Refresh period.")] = "1s",
    as_json: JsonOpt = False,
) -> None:
    """Workers, queue and counts right now."""
    with _client(ctx) as client:
        if _json_wanted(ctx, as_json):
            _dump(client.stats().to_json())
            return
        if not watch:
            _console().print(_stats_table(client.stats()))
            return
        from rich.live import Live

        period = to_seconds(interval) or 1.0
        with Live(_stats_table(client.stats()), console=_console(), auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(period)
                    live.update(_stats_table(client.stats()), refresh=True)
            except KeyboardInterrupt:
                pass


@app.command()
def metrics(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Rates, latencies and totals since the daemon started."""
    with _client(ctx) as client:
        m: Metrics = client.metrics()
    if _json_wanted(ctx, as_json):
        _dump(m.to_json())
        return
    for key, value in m.to_json().items():
        if key.endswith("_rate") and "success" not in key and "failure" not in key:
            text = f"{value:.2f}/s"
        elif key.endswith("_rate"):
            text = f"{value:.1%}"
        elif isinstance(value, float) or value is None:
            text = fmt_seconds(value)
        else:
            text = str(value)
        print(f"{key:<16} {text}")


@app.command()
def clean(
    ctx: typer.Context,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Only tasks that ended this long ago.")
    ] = None,
) -> None:
    """Remove finished tasks from the journal."""
    try:
        seconds = to_seconds(older_than)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    with _client(ctx) as client:
        print(f"removed {client.clean(seconds)}")


@daemon_app.command("status")
def daemon_status(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Is the daemon up? Exit 0 if so, 69 if not."""
    with _client(ctx) as client:
        s = client.stats()
        if _json_wanted(ctx, as_json):
            _dump({"socket": str(client.socket), "running": True, **s.to_json()})
            return
        print(
            f"taskerd {s.version} running on {client.socket}: up {fmt_seconds(s.uptime)}, "
            f"{s.running} running, {s.queued} queued"
            + (", shutting down" if s.shutting_down else "")
        )


def _shutdown(ctx: typer.Context, mode: str) -> None:
    with _client(ctx) as client:
        client.shutdown(mode)
    print(f"taskerd: {mode} requested")


@daemon_app.command("stop")
def daemon_stop(ctx: typer.Context) -> None:
    """Stop accepting; running tasks get stop_timeout; queued ones stay for the next start."""
    _shutdown(ctx, "stop")


@daemon_app.command("drain")
def daemon_drain(ctx: typer.Context) -> None:
    """Stop accepting, finish everything queued, then exit."""
    _shutdown(ctx, "drain")


@daemon_app.command("kill")
def daemon_kill(ctx: typer.Context) -> None:
    """Cancel running and queued tasks at once, then exit."""
    _shutdown(ctx, "kill")


def run_app(args: Sequence[str]) -> int:
    """Run the typer app; every error becomes one ``taskerctl: error:`` line and an exit status."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(list(args), prog_name="taskerctl", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as err:
        assert err.ctx is not None
        print(err.ctx.get_help())
        return EXIT_USAGE
    except click_exc.UsageError as err:
        print(f"taskerctl: error: {err.format_message()}", file=sys.stderr)
        return EXIT_USAGE
    except click_exc.ClickException as err:
        print(f"taskerctl: error: {err.format_message()}", file=sys.stderr)
        return err.exit_code
    except TaskerError as err:
        print(f"taskerctl: error: {err}", file=sys.stderr)
        return err.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except OSError as err:
        print(f"taskerctl: error: {err}", file=sys.stderr)
        return EXIT_OTHER
    return rv if isinstance(rv, int) else 0

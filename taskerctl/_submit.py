"""What ``submit``, ``run``, ``wait`` and ``logs`` do with tasks, apart from parsing: the spec's
options, the caller's standard input, following a task's output, Ctrl-C, batches, and how a task
ended (one line on stderr, and the exit status).

Every message goes to stderr as one line starting ``taskerctl:``; stdout carries ids, the task's
own output, or (with ``--json``) exactly one JSON document.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from shlex import quote
from typing import IO, TYPE_CHECKING, Any, NamedTuple, cast

from taskerctl.errors import EXIT_USAGE, TaskerError

if TYPE_CHECKING:
    from datetime import datetime

    from taskerctl._sync import Client
    from taskerctl.models import SpecOptions, TaskEvent, TaskOptions, TaskResult, TaskState

#: The most a task's standard input may hold (``TaskSpec.stdin``).
MAX_STDIN = 1 << 20
#: Commands of ``submit --batch`` sent per Submit request.
BATCH_SIZE = 1000
#: taskerctl's exit status after Ctrl-C (128 + SIGINT), as a shell's.
EXIT_INTERRUPTED = 130


def note(message: str) -> None:
    """One line on stderr."""
    print(f"taskerctl: {message}", file=sys.stderr, flush=True)


def dump(data: object, *, compact: bool = False) -> None:
    """The JSON document of a command, on stdout."""
    print(json.dumps(data, indent=None if compact else 2), flush=True)


# -- what a task record says -----------------------------------------------------------------


def record(t: TaskResult, *, output: bool = False) -> dict[str, Any]:
    """A task's JSON record, where what is absent is ``None``: the pid and worker of a task that
    never started, and the exit status of one that has not ended."""
    d = t.to_json(output=output)
    if not t.pid:
        d["pid"] = None
    if t.started_at is None:
        d["worker"] = None
    if not t.done:
        d["exit_status"] = None
    return d


def note_truncated(t: TaskResult, *, stdout: bool = True, stderr: bool = True) -> None:
    """Say on stderr which of the task's kept output streams were cut at the daemon's limit."""
    for name, wanted, cut, data in (
        ("stdout", stdout, t.stdout_truncated, t.stdout),
        ("stderr", stderr, t.stderr_truncated, t.stderr),
    ):
        if wanted and cut:
            note(
                f"task {t.id}: only the first {len(data):,} bytes of its {name} were kept "
                "(the daemon's output_limit); the rest was dropped"
            )


def note_state(task_id: int, state: TaskState, reason: str = "") -> None:
    """Say on stderr that a task waited on was paused, resumed, stashed, is waiting for its
    dependencies or scheduled for later, and what ends it."""
    why = f" ({reason})" if reason else ""
    if state.name == "PAUSED":
        note(f"task {task_id} is paused{why}: it goes on once resumed (taskerctl resume {task_id})")
    elif state.name == "STASHED":
        note(f"task {task_id} is stashed{why}: it runs once enqueued (taskerctl enqueue {task_id})")
    elif state.name == "WAITING":
        note(f"task {task_id} is waiting{why}: it is queued once its dependencies have ended")
    elif state.name == "SCHEDULED":
        note(f"task {task_id} is scheduled{why}: it is queued when it is due")
    elif state.name == "RUNNING":
        note(f"task {task_id} resumed{why}")


def id_list(ids: Sequence[int], most: int | None = None) -> str:
    """``3, 5, 8``; past ``most`` of them, ``3, 5 and 2 more``."""
    shown = ", ".join(str(i) for i in ids[:most])
    return shown if most is None or len(ids) <= most else f"{shown} and {len(ids) - most:,} more"


def held(t: TaskResult, when: Callable[[datetime], str], most: int | None = 3) -> str:
    """What holds a waiting or scheduled task: ``on 3, 5``, ``until 14:05:00`` (``when`` writes
    the time); "" for another."""
    if t.state.name == "WAITING" and t.waiting_on:
        return f"on {id_list(t.waiting_on, most)}"
    if t.state.name == "SCHEDULED" and t.start_at is not None:
        return f"until {when(t.start_at)}"
    return ""


def report(t: TaskResult, *, output_shown: bool) -> int:
    """Say on stderr how a task that did not succeed ended, unless its own exit status and the
    output just shown say it; return taskerctl's exit status for it."""
    own_exit = t.state.name == "FAILED" and t.exit_code is not None
    if not t.ok and not (output_shown and own_exit):
        note(f"task {t.id} {t.describe()}")
    return t.exit_status


# -- building a task -------------------------------------------------------------------------


def read_stdin() -> bytes:
    """What is piped to us, for a task's standard input: nothing from a terminal."""
    stream = sys.stdin
    if stream is None:
        return b""
    try:
        if os.isatty(stream.fileno()):
            return b""
        data = stream.buffer.read(MAX_STDIN + 1)
    except (OSError, ValueError):  # closed, or not a real file
        return b""
    if len(data) > MAX_STDIN:
        raise TaskerError(
            f"standard input holds more than {MAX_STDIN:,} bytes, the most a task can be given: "
            "pass --no-stdin, or let the command read a file"
        )
    return data


def task_options(
    *,
    shell: bool,
    env: Mapping[str, str],
    labels: Mapping[str, str],
    priority: str | None = None,
    timeout: float | None = None,
    queue_timeout: float | None = None,
    once: bool = False,
    retries: int | None = None,
    max_requeues: int | None = None,
    cwd: str | None = None,
    stdin: bytes = b"",
    group: str | None = None,
    on_finish: str | None = None,
) -> SpecOptions:
    """``Client.submit`` keyword arguments from the command line's options.

    The task gets the caller's environment (plus ``env``) and working directory, as with nohup.
    """
    kw: SpecOptions = {"shell": shell, "once": once, "env": {**os.environ, **env}}
    if labels:
        kw["labels"] = dict(labels)
    if priority is not None:
        kw["priority"] = priority
    if timeout is not None:
        kw["timeout"] = timeout
    if queue_timeout is not None:
        kw["queue_timeout"] = queue_timeout
    if retries is not None:
        kw["retries"] = retries  # TaskSpec.retries: a failed attempt runs again
    if max_requeues is not None:
        kw["max_requeues"] = max_requeues  # TaskSpec.max_retries: after a lost attempt
    if cwd is not None:
        kw["cwd"] = cwd
    if stdin:
        kw["stdin"] = stdin
    if group is not None:
        kw["group"] = group
    if on_finish is not None:
        kw["on_finish"] = on_finish
    return kw


def when_options(
    spec: SpecOptions,
    *,
    after: Sequence[int] = (),
    after_any: Sequence[int] = (),
    delay: float | None = None,
    at: datetime | float | None = None,
) -> TaskOptions:
    """``spec`` with dependencies (``after``: all must succeed; ``after_any``: however they end)
    and a start time (``delay`` from now, or ``at``); ValueError when both of a pair are given."""
    options = cast("TaskOptions", dict(spec))
    if after and after_any:
        raise ValueError(
            "give --after or --after-any, not both: a task waits on all its dependencies one way"
        )
    if after or after_any:
        options["after"] = list(after or after_any)
        options["after_any"] = bool(after_any)
    if delay is not None:
        options["delay"] = delay
    start = schedule_start(delay, at)
    if at is not None:
        options["start_at"] = start
    return options


def schedule_start(delay: float | None, at: datetime | float | None) -> datetime | float | None:
    """When a schedule (or a task) starts: ``delay`` seconds from now, or ``at``; ValueError when
    both are given."""
    if delay is not None and at is not None:
        raise ValueError("give --delay or --at, not both")
    if delay is not None:
        import time

        return time.time() + delay
    return at


def argv(words: Iterable[str], *, shell: bool) -> list[str]:
    """The task's argv: with ``--shell`` the words are joined into one script (as ssh does)."""
    words = list(words)
    return [" ".join(words)] if shell and words else words


# -- following a task ------------------------------------------------------------------------


def _close(events: Iterable[Any]) -> None:
    close: Callable[[], object] | None = getattr(events, "close", None)
    if close is not None:
        close()


def _write(sink: IO[bytes] | None, data: bytes) -> None:
    if sink is not None and data:
        sink.write(data)
        sink.flush()


def follow(
    events: Iterable[TaskEvent],
    *,
    stdout: IO[bytes] | None,
    stderr: IO[bytes] | None,
    on_event: Callable[[TaskEvent], None] | None = None,
) -> TaskResult | None:
    """Copy a task's output chunks to ``stdout``/``stderr`` (None: drop) as they arrive, say
    when a failed attempt runs again or the task is paused, resumed or stashed, and return the
    task's result.

    When no chunk arrived (the task had already finished), the output the daemon kept is copied
    instead, with a note when it was cut.
    """
    seen = False
    for ev in events:
        if on_event is not None:
            on_event(ev)
        if ev.kind == "output":
            seen = True
            _write(stderr if ev.stream == "stderr" else stdout, ev.data)
        elif ev.kind == "retrying":
            note(f"task {ev.task_id}: attempt {ev.attempt} failed ({ev.reason}); it runs again")
        elif ev.kind == "state_changed" and ev.state is not None:
            note_state(ev.task_id, ev.state, ev.reason)
        elif ev.kind == "finished" and ev.result is not None:
            r = ev.result
            if not seen:
                _write(stdout, r.stdout)
                _write(stderr, r.stderr)
                note_truncated(r, stdout=stdout is not None, stderr=stderr is not None)
            return r
    return None


def interrupted(client: Client, task_id: int | None, *, cancel: bool) -> int:
    """After Ctrl-C: cancel the task (or say it goes on); return the exit status, 130."""
    if task_id is None:  # a Run interrupted before its first event: the daemon cancels it
        note("interrupted: the task is cancelled" if cancel else "interrupted")
    elif cancel:
        client.cancel(task_id)
        note(f"interrupted: task {task_id} cancelled")
    else:
        note(f"interrupted: task {task_id} goes on (taskerctl wait {task_id})")
    return EXIT_INTERRUPTED


def watch(
    client: Client,
    events: Iterable[TaskEvent],
    *,
    as_json: bool,
    cancel_on_interrupt: bool,
    stdout: bool = True,
    stderr: bool = True,
    task_id: int | None = None,
) -> int:
    """Follow one task to its end: its output to our stdout and stderr (into the JSON document
    with ``--json``), Ctrl-C, and how it ended. Returns taskerctl's exit status. ``task_id`` is
    the task's id when known before its first event (a submitted task, not a Run)."""
    out: IO[bytes] = io.BytesIO() if as_json else sys.stdout.buffer
    err: IO[bytes] = io.BytesIO() if as_json else sys.stderr.buffer
    ids: list[int] = [] if task_id is None else [task_id]

    def seen(ev: TaskEvent) -> None:
        if not ids:
            ids.append(ev.task_id)

    try:
        result = follow(
            events,
            stdout=out if stdout else None,
            stderr=err if stderr else None,
            on_event=seen,
        )
    except KeyboardInterrupt:
        _close(events)  # a Run call ends here, and the daemon cancels its task
        return interrupted(client, ids[0] if ids else None, cancel=cancel_on_interrupt)
    finally:
        _close(events)
    if result is None:
        raise TaskerError("the event stream ended before the task finished")
    if as_json:
        doc = record(result)
        for name, wanted, sink in (("stdout", stdout, out), ("stderr", stderr, err)):
            if wanted:
                assert isinstance(sink, io.BytesIO)
                doc[name] = sink.getvalue().decode(errors="replace")
        dump(doc)
    return report(result, output_shown=not as_json)


def wait_one(client: Client, task_id: int, *, as_json: bool, cancel_on_interrupt: bool) -> int:
    """Wait for one task without its output: ``submit --wait``."""
    try:
        result = client.wait(task_id)
    except KeyboardInterrupt:
        return interrupted(client, task_id, cancel=cancel_on_interrupt)
    if as_json:
        dump(record(result))
    return report(result, output_shown=False)


# -- batches ---------------------------------------------------------------------------------


class BatchIncomplete(TaskerError):
    """Part of a batch was not submitted; the message says from which line on."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _BadLine(Exception):
    exit_code = EXIT_USAGE

    def __init__(self, lineno: int, why: str = "is not valid UTF-8") -> None:
        super().__init__(f"line {lineno:,} {why}")
        self.lineno = lineno


#: How a batch line names the earlier commands it runs after: ``@after 1,3 CMD`` (they must all
#: succeed) or ``@after-any 2 CMD`` (however they end). Commands are counted from 1, blank lines
#: and comments not counted.
AFTER, AFTER_ANY = "@after", "@after-any"
BATCH_HELP = (
    "A line '@after N[,N...] CMD' runs CMD once the batch's commands number N have succeeded "
    "(cancelled if one does not); '@after-any N[,N...] CMD' once they have ended, however. "
    "Commands are numbered from 1 in the order of the file, blank lines and comments not "
    "counted; N must be an earlier one."
)


class BatchLine(NamedTuple):
    """A command of a batch: its line, the command, and the earlier commands it runs after (their
    places from 0), and whether any ending of theirs will do (``@after-any``)."""

    lineno: int
    command: str
    refs: tuple[int, ...] = ()
    after_any: bool = False


def _directive(lineno: int, line: str, number: int, after_any: bool | None) -> BatchLine:
    """Read ``@after N[,N...] CMD`` (or ``@after-any``), the ``number``-th command of a batch
    whose every task runs after others, as ``after_any`` says (None: not)."""
    word, numbers, command = (*line.split(None, 2), "", "")[:3]
    if word not in (AFTER, AFTER_ANY):
        raise _BadLine(lineno, f"starts with {word!r}: use '{AFTER} N[,N...] COMMAND'")
    if after_any is not None and after_any != (word == AFTER_ANY):
        given = "--after-any" if after_any else "--after"
        raise _BadLine(
            lineno, f"takes {word} with {given}: a task waits on all its dependencies one way"
        )
    refs: list[int] = []
    for text in numbers.split(","):
        if not (text.isdecimal() and 1 <= int(text) < number):
            raise _BadLine(
                lineno, f"{word} {numbers}: {text!r} is not the number of an earlier command"
            )
        refs.append(int(text) - 1)
    if not command:
        raise _BadLine(lineno, f"has no command after '{word} {numbers}'")
    return BatchLine(lineno, command, tuple(dict.fromkeys(refs)), word == AFTER_ANY)


def batch_commands(source: IO[bytes], after_any: bool | None = None) -> Iterator[BatchLine]:
    """Each line that is not blank or a ``#`` comment, with its ``@after`` references; with
    ``after_any`` not None, every task of the batch runs after others (``--after-any`` when
    true): a line may then only add references of the same kind."""
    number = 0
    for lineno, raw in enumerate(source, 1):
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            raise _BadLine(lineno) from None
        if line and not line.startswith("#"):
            number += 1
            if line.startswith("@"):
                yield _directive(lineno, line, number, after_any)
            else:
                yield BatchLine(lineno, line)


def _batch_items(
    pending: Sequence[BatchLine], accepted: Sequence[int], options: TaskOptions
) -> list[Any]:
    """``submit_many`` items for a request of a batch: a line with references becomes a dict whose
    ``after`` holds the ids of the commands of earlier requests (with the batch's own ``--after``)
    and whose ``after_items`` the places of those of this one."""
    from taskerctl._core import split_refs

    items: list[Any] = []
    for line in pending:
        if not line.refs:
            items.append(line.command)
            continue
        known, local = split_refs(line.refs, len(accepted), accepted)
        after = [*cast("Iterable[int]", options.get("after") or ()), *known]
        items.append(
            {"cmd": line.command, "after": after, "after_items": local, "after_any": line.after_any}
        )
    return items


def _count(commands: Iterator[BatchLine]) -> int:
    """How many commands are left (a line that is not UTF-8 counts as one)."""
    n = 0
    while True:
        try:
            for _ in commands:
                n += 1
            return n
        except _BadLine:
            n += 1


def submit_batch(
    client: Client,
    source: IO[bytes],
    name: str,
    options: TaskOptions,
    *,
    as_json: bool,
    stashed: bool = False,
) -> int:
    """``submit --batch``: one shell command per line, ``BATCH_SIZE`` per request (``stashed``:
    each task stashed). A line may run after earlier ones (``@after``, see ``BATCH_HELP``): one
    of an earlier request by its id, one of the same request by its place in it.

    The ids of the tasks accepted are printed as they are. A request that fails (or a line that
    is not UTF-8) ends the batch; the error then says how many commands were not submitted, and
    from which line on, so that the rest can be resumed.
    """
    accepted: list[int] = []
    commands = batch_commands(
        source, bool(options.get("after_any")) if options.get("after") else None
    )
    pending: list[BatchLine] = []

    def send() -> None:
        lines = _batch_items(pending, accepted, options)
        handles = client.submit_many(lines, batch_size=BATCH_SIZE, stashed=stashed, **options)
        accepted.extend(h.id for h in handles)
        if not as_json:
            sys.stdout.write("".join(f"{h.id}\n" for h in handles))
            sys.stdout.flush()
        pending.clear()

    try:
        for item in commands:
            pending.append(item)
            if len(pending) == BATCH_SIZE:
                send()
        if pending:
            send()
    except (TaskerError, _BadLine) as exc:
        if as_json:
            dump(accepted)
        bad = isinstance(exc, _BadLine)
        first = pending[0][0] if pending else exc.lineno if isinstance(exc, _BadLine) else 0
        left = len(pending) + bad + _count(commands)
        if not accepted:
            message = f"{exc}: nothing submitted"
        else:
            message = (
                f"{exc}: {len(accepted):,} tasks accepted (ids printed), {left:,} commands not "
                f"submitted, from line {first:,} "
                + (
                    "of the input on"
                    if name == "-"
                    else f"on (resume: tail -n +{first} {quote(name)})"
                )
            )
        raise BatchIncomplete(message, exc.exit_code) from None
    if as_json:
        dump(accepted)
    return 0

"""The daemon's log (taskerd.logs): text and JSON lines, task ids, journal priorities, writes that
never wait for stderr; and a real taskerd logging JSON, and logging to a (pretend) journal."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taskerd.logs import (
    JsonFormatter,
    StderrHandler,
    TextFormatter,
    journal_stream,
    priority,
)
from tests.conftest import Daemon
from tests.daemon.util import spec, submit, wait

STARTED = "task %d started: pid %d, worker %d, attempt %d"
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \w[\w ]*? +[\w.]+: .*")


def record(
    msg: object, *args: object, level: int = logging.INFO, name: str = "taskerd", **extra: Any
) -> logging.LogRecord:
    """A record as ``logging.getLogger(name).log(level, msg, *args, extra=extra)`` makes it."""
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def as_json(rec: logging.LogRecord, journal: bool = False) -> dict[str, Any]:
    line = JsonFormatter(journal=journal).format(rec)
    assert "\n" not in line
    loaded: dict[str, Any] = json.loads(line)
    return loaded


# ------------------------------------------------------------------ JSON


def test_json_keys_and_task_id_from_the_message() -> None:
    rec = record(STARTED, 7, 4242, 0, 1)
    out = as_json(rec)
    assert list(out) == ["ts", "level", "logger", "event", "task_id", "args"]
    assert out["level"] == "info" and out["logger"] == "taskerd"
    assert out["event"] == "task 7 started: pid 4242, worker 0, attempt 1"
    assert out["task_id"] == 7
    assert out["args"] == [7, 4242, 0, 1]
    ts = datetime.strptime(out["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(ts.timestamp() - rec.created) < 2e-6


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("tasks %d..%d accepted (%d)", (1, 9, 9)),  # many tasks: about none of them
        ("schedule %d: occurrence skipped, task %d has not ended", (3, 7)),
        ("task %s accepted", ("7",)),  # not "task %d"
        ("task %d accepted", (True,)),  # a bool is no task id
        ("removed %d finished tasks", (4,)),
        ("taskerd stopped", ()),
    ],
)
def test_json_task_id_only_by_the_convention(msg: str, args: tuple[object, ...]) -> None:
    out = as_json(record(msg, *args))
    assert "task_id" not in out
    assert out.get("args", []) == list(args)
    assert "args" in out or not args


def test_json_fields_given_with_extra() -> None:
    fields = {"task_id": 9, "pid": 4242, "by": "cli", "path": Path("/x")}
    out = as_json(record("task %d paused", 9, fields=fields))
    assert out["task_id"] == 9
    assert out["fields"] == {"task_id": 9, "pid": 4242, "by": "cli", "path": "/x"}
    # The fields' task_id wins over the message's; fields without one leave the convention be.
    assert as_json(record("task %d x", 1, fields={"task_id": 2}))["task_id"] == 2
    assert as_json(record("task %d x", 1, fields={"n": 2}))["task_id"] == 1
    assert as_json(record("something", fields={"task_id": 3}))["task_id"] == 3


def test_json_values_it_cannot_hold() -> None:
    error = ValueError("bad")
    out = as_json(record("task %d: %r at %s", 5, error, Path("/tmp/é")))
    assert out["args"] == [5, "ValueError('bad')", "/tmp/é"]
    assert out["event"] == "task 5: ValueError('bad') at /tmp/é"
    # NaN is no JSON, nor are keys that are not strings: the args as their repr, on one line.
    assert as_json(record("took %f", math.nan))["args"] == "(nan,)"
    assert as_json(record("%s", {(1, 2): 3}))["args"] == "{(1, 2): 3}"
    assert as_json(record("named %(a)s", {"a": 1}))["args"] == {"a": 1}
    out = as_json(record('quotes " and \\ and \n newline\t\x00 and ✓'))
    assert out["event"] == 'quotes " and \\ and \n newline\t\x00 and ✓'
    out = as_json(record(object()))  # a message that is no string
    assert out["event"].startswith("<object object")


def test_json_exception_and_stack() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("task %d: its end could not be recorded", 3, level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    rec.stack_info = "Stack (most recent call last):\n  here"
    out = as_json(rec)
    assert out["level"] == "error" and out["task_id"] == 3
    assert out["exc"].startswith("Traceback (most recent call last):")
    assert out["exc"].endswith("RuntimeError: boom")
    assert out["stack"] == rec.stack_info


@pytest.mark.parametrize(
    ("level", "name", "prefix"),
    [
        (logging.CRITICAL, "critical", "<2>"),
        (logging.ERROR, "error", "<3>"),
        (logging.WARNING, "warning", "<4>"),
        (logging.INFO, "info", "<6>"),
        (logging.DEBUG, "debug", "<7>"),
        (logging.INFO + 5, "level 25", "<6>"),  # a level in between: the one below's priority
    ],
)
def test_priority_prefixes(level: int, name: str, prefix: str) -> None:
    assert f"<{priority(level)}>" == prefix
    rec = record("task %d x", 1, level=level)
    line = JsonFormatter(journal=True).format(rec)
    assert line.startswith(prefix + "{")
    assert json.loads(line[len(prefix) :])["level"] == name
    assert JsonFormatter().format(rec).startswith("{")
    text = TextFormatter(journal=True).format(rec)
    assert text.startswith(prefix) and TEXT_LINE.fullmatch(text[len(prefix) :])
    assert TEXT_LINE.fullmatch(TextFormatter().format(rec))


# ------------------------------------------------------------------ text


def test_text_line_is_the_standard_one() -> None:
    rec = record(STARTED, 7, 4242, 0, 1, level=logging.WARNING, name="taskerd.hooks")
    line = TextFormatter().format(rec)
    expected = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s").format(rec)
    assert line == expected
    assert " WARNING taskerd.hooks: task 7 started: pid 4242, worker 0, attempt 1" in line


def test_text_traceback_lines_all_carry_the_priority() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("journal thread crashed", level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    lines = TextFormatter(journal=True).format(rec).split("\n")
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert "\n<" not in TextFormatter().format(rec)


# ------------------------------------------------------------------ the journal's stream


def test_journal_stream_names_our_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "log", "wb") as f, open(tmp_path / "other", "wb") as other:
        st = os.fstat(f.fileno())
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not journal_stream(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal_stream(f.fileno())
        assert not journal_stream(other.fileno())  # inherited, but stderr is elsewhere now
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not journal_stream(f.fileno())


def _log_in_a_process(tmp_path: Path, log_format: str, journal: bool) -> list[str]:
    """Lines that ``setup_logging`` writes in a fresh interpreter, whose stderr is a file; with
    ``journal``, JOURNAL_STREAM names that file, as systemd names the journal's stream."""
    path = tmp_path / f"{log_format}-{journal}.log"
    path.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        st = os.stat(path)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    code = (
        "import logging, warnings\n"
        "from taskerd.logs import setup_logging\n"
        f"setup_logging('debug', {log_format!r})\n"
        "log = logging.getLogger('taskerd')\n"
        "log.debug('task %d debug', 1)\n"
        "log.info('task %d started: pid %d, worker %d, attempt %d', 2, 3, 4, 5)\n"
        "log.warning('task %d retrying', 6)\n"
        "log.error('journal write failed: %s', 'disk full')\n"
        "log.critical('bad')\n"
        "warnings.warn('careful')\n"
    )
    with open(path, "ab") as err:
        subprocess.run([sys.executable, "-c", code], stderr=err, env=env, check=True, timeout=30)
    return path.read_text().splitlines()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_setup_logging_prefixes_only_for_the_journal(tmp_path: Path, log_format: str) -> None:
    plain = _log_in_a_process(tmp_path, log_format, journal=False)
    journal = _log_in_a_process(tmp_path, log_format, journal=True)
    assert len(plain) >= 6 and len(journal) >= 6
    assert not any(line.startswith("<") for line in plain)
    assert [line[:3] for line in journal[:6]] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<4>"]
    assert all(re.match(r"<[2-7]>", line) for line in journal)
    if log_format == "json":
        events = [json.loads(line) for line in plain]
        assert [e["level"] for e in events] == [
            "debug", "info", "warning", "error", "critical", "warning"
        ]  # fmt: skip
        assert [e.get("task_id") for e in events] == [1, 2, 6, None, None, None]
        assert events[-1]["logger"] == "py.warnings" and "careful" in events[-1]["event"]
        assert [json.loads(line[3:]) | {"ts": 0} for line in journal] == [
            e | {"ts": 0} for e in events
        ]


# ------------------------------------------------------------------ the handler


def _fill(fd: int) -> int:
    """Fill the pipe whose write end is ``fd`` until a write would block; returns bytes written."""
    os.set_blocking(fd, False)
    n = 0
    try:
        while True:
            n += os.write(fd, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(fd, True)
    return n


def _drain(fd: int, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 1 << 16):
            into.extend(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_handler_writes_every_line_in_order(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as f:
        handler = StderrHandler(f.fileno())
        handler.setFormatter(logging.Formatter("%(message)s"))
        for i in range(1000):
            handler.handle(record("line %d é \udcff", i))
        time.sleep(handler.INTERVAL * 3)  # the thread writes them, unasked
        assert (tmp_path / "out").read_bytes().count(b"\n") == 1000
        handler.handle(record("last"))
        handler.close()  # writes what waits
    assert (tmp_path / "out").read_bytes().decode().splitlines() == [
        *(f"line {i} é \\udcff" for i in range(1000)), "last"
    ]  # fmt: skip
    handler._thread.join(2)
    assert not handler._thread.is_alive()


def test_a_blocked_stderr_never_blocks_the_logger() -> None:
    """A full pipe nobody reads: records still return at once; past LIMIT lines are dropped,
    counted, and said once the pipe takes lines again."""
    r, w = os.pipe()
    got = bytearray()
    reader: threading.Thread | None = None
    try:
        filled = _fill(w)
        handler = StderrHandler(w)
        handler.LIMIT = 50
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.handle(record("first"))
        deadline = time.monotonic() + 5
        while handler._lines and time.monotonic() < deadline:  # taken by the thread, which
            time.sleep(0.01)  # now waits in write()
        time.sleep(0.1)
        slowest = 0.0
        for i in range(200):
            t = time.perf_counter()
            handler.handle(record("line %d", i))
            slowest = max(slowest, time.perf_counter() - t)
        assert slowest < 0.05, f"a record took {slowest:.3f} s with stderr blocked"
        reader = _drain(r, got)
        handler.close()
    finally:
        os.close(w)
        if reader is not None:
            reader.join(10)
        os.close(r)
    lines = bytes(got[filled:]).decode().splitlines()
    assert lines == [
        "first", *(f"line {i}" for i in range(50)), "150 log lines dropped: stderr was blocked"
    ]  # fmt: skip


# ------------------------------------------------------------------ cost


def _rate(formatter: logging.Formatter, n: int = 20_000) -> float:
    """Records per second through a logger, the handler and ``formatter`` into /dev/null."""
    fd = os.open(os.devnull, os.O_WRONLY)
    handler = StderrHandler(fd)
    handler.setFormatter(formatter)
    logger = logging.Logger(f"bench-{type(formatter).__name__}", logging.INFO)
    logger.addHandler(handler)
    best = 0.0
    try:
        for _ in range(5):
            t = time.perf_counter()
            for i in range(n):
                logger.info(STARTED, i, 4242, 3, 1)
            best = max(best, n / (time.perf_counter() - t))
    finally:
        handler.close()
        os.close(fd)
    return best


def test_a_json_record_costs_about_what_a_text_one_does() -> None:
    text, js = _rate(TextFormatter()), _rate(JsonFormatter())
    print(f"text {text:,.0f} records/s, json {js:,.0f} records/s ({text / js:.2f}x the time)")
    assert js > text / 2, (text, js)


# ------------------------------------------------------------------ a real taskerd


def _records(d: Daemon) -> list[str]:
    return d.log_path.read_text().splitlines()


def test_daemon_logs_json(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", config='log_format = "json"')
    ok, failing = submit(d.stub, spec("true"), spec("false", retries=1))
    done = wait(d.stub, ok, failing)
    assert len(done) == 2
    assert d.stop() == 0  # and the log is written out
    lines = _records(d)
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "event"} <= set(e) for e in events)
    assert any(e["event"].startswith("taskerd serving on") for e in events)
    for task_id in (ok, failing):
        about = [e for e in events if re.match(rf"task {task_id}\b", e["event"])]
        assert len(about) >= 2, about  # started, ended (and a retry; accepted as a batch)
        assert all(e.get("task_id") == task_id for e in about), about
    retry = [e for e in events if e.get("task_id") == failing and e["level"] == "warning"]
    assert retry and "running it again" in retry[0]["event"]


def test_daemon_under_systemd_prefixes_priorities(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", start=False)
    d.log_path.touch()  # the daemon's stderr: JOURNAL_STREAM names it, as systemd would
    st = os.stat(d.log_path)
    d.env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    d.start()
    (failing,) = submit(d.stub, spec("false", retries=1))
    wait(d.stub, failing)
    assert d.stop() == 0
    lines = _records(d)
    assert lines and all(re.match(r"<[2-7]>\d{4}-", line) for line in lines), lines
    assert any(line.startswith("<6>") and "taskerd serving on" in line for line in lines)
    assert any(
        line.startswith("<4>") and f"task {failing} failed attempt" in line for line in lines
    )


def test_daemon_not_under_systemd_has_no_prefix(make_daemon: type[Daemon]) -> None:
    """JOURNAL_STREAM inherited from a systemd service, with stderr elsewhere: no prefix."""
    d = make_daemon("--workers", "1", env={**os.environ, "JOURNAL_STREAM": "1:1"})
    assert d.stop() == 0
    lines = _records(d)
    assert lines and not any(line.startswith("<") for line in lines)

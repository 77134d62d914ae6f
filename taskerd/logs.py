"""``taskerd``'s log: one line per event on stderr, as text or as JSON, written off the event loop.

Two formats (``log_format`` in the config):

``text`` (the default)
    ``2025-06-01 12:34:56,789 INFO    taskerd: task 7 started: pid 4242, worker 0, attempt 1``

``json``
    One JSON object per event (per log record), on one line::

        {"ts":"2025-06-01T10:34:56.789012Z","level":"info","logger":"taskerd",
         "event":"task 7 started: pid 4242, worker 0, attempt 1","task_id":7,"args":[7,4242,0,1]}

    ``ts``
        when it happened: ISO 8601, UTC, with microseconds and a ``Z``.
    ``level``
        ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
    ``logger``
        the logger's name (``taskerd``, ``taskerd.hooks``...).
    ``event``
        the message, formatted as the text log shows it.
    ``task_id``
        when the event is about one task: the ``fields``' ``task_id``, else, by convention, the
        first argument of a message that starts with ``"task %d"`` (``log.info("task %d
        started: ...", task_id, ...)``). Absent otherwise.
    ``args``
        the message's ``%`` arguments, as a list (an object for a ``%(name)s`` message), when it
        has any. Values JSON cannot hold are written as strings (exceptions as their repr).
    ``fields``
        the event's named fields, when the call gives them: ``log.info("task %d paused",
        task_id, extra={"fields": {"task_id": task_id, "by": "cli"}})``.
    ``exc``
        with an exception: its formatted traceback (``stack`` likewise for ``stack_info``).

Under systemd (``JOURNAL_STREAM`` names the device and inode of our stderr: systemd connected it
to the journal) every line starts with its syslog priority as sd-daemon(3) describes, so the
journal files it at the right level: ``<2>`` critical, ``<3>`` error, ``<4>`` warning, ``<6>``
info, ``<7>`` debug. In the text format every line of a traceback carries the prefix too. Run
any other way, lines have no prefix.

Writes: records are formatted on the thread that logs them (the event loop's), then handed to a
writer thread that writes them to stderr a few times a second, in one write call for many lines.
The loop never waits for stderr: when stderr is slow or blocked (a full pipe, a stalled journal),
lines wait in memory, up to :attr:`StderrHandler.LIMIT`; past that they are dropped and counted,
and a warning says how many once stderr takes lines again.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress

__all__ = ["JsonFormatter", "StderrHandler", "TextFormatter", "priority", "setup_logging"]

#: The text format's line.
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: The message prefix that makes a record's first argument its ``task_id`` in JSON.
TASK_PREFIX = "task %d"

_LEVEL_NAMES = {
    logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
    logging.ERROR: "error", logging.CRITICAL: "critical",
}  # fmt: skip


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (sd-daemon(3)): 2 critical ... 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


#: The ``<N>`` prefix of each level, and of levels in between.
_PREFIXES = {level: f"<{priority(level)}>" for level in range(logging.CRITICAL + 11)}


def _prefix(levelno: int) -> str:
    return _PREFIXES.get(levelno) or f"<{priority(levelno)}>"


def journal_stream(fd: int = 2) -> bool:
    """Whether ``fd`` is the journal's stream: ``JOURNAL_STREAM`` (``device:inode``, set by
    systemd) names it. systemd.exec(5) asks to compare the two: a child whose stderr was
    redirected elsewhere inherits the variable but not the stream."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class TextFormatter(logging.Formatter):
    """The standard line, with the date and time formatted once a second, not once a line; with
    ``journal``, each line starts with its syslog priority."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__(TEXT_FORMAT)
        self.journal = journal
        self._stamp = (-1, "")  # (second, its text): one attribute, so threads see a pair

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached, stamp = self._stamp
        if second != cached:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._stamp = (second, stamp)
        return f"{stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if not self.journal:
            return line
        prefix = _prefix(record.levelno)
        if "\n" in line:  # a traceback: the journal reads each line on its own
            line = line.rstrip("\n").replace("\n", "\n" + prefix)
        return prefix + line


def _json_default(value: object) -> str:
    return repr(value) if isinstance(value, BaseException) else str(value)


_quote = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept (C when built)
_py_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_json_default, allow_nan=False
).encode
# json.dumps makes a new C encoder on every call: make one, once (markers, default, encoder,
# indent, key and item separators, sort_keys, skipkeys, allow_nan: NaN is no JSON).
_make = getattr(json.encoder, "c_make_encoder", None)
_chunks = (
    None
    if _make is None
    else _make(None, _json_default, _quote, None, ":", ",", False, False, False)
)


def _value(value: object) -> str:
    """Any value as JSON (what JSON cannot hold, as a string: exceptions as their repr)."""
    if _chunks is None:  # pragma: no cover - CPython has the C encoder
        return _py_encode(value)
    return "".join(_chunks(value, 0))


def _safe_value(value: object) -> str:
    try:
        return _value(value)
    except (TypeError, ValueError, RecursionError):  # keys JSON cannot hold, a cycle...
        return _quote(repr(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module's doc for its keys).

    Written by hand from JSON-quoted parts rather than with ``json.dumps`` of a dict: that costs
    as much as the text line does (see tests/daemon/test_logs.py).
    """

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal
        self._stamp = (-1, "")

    def timestamp(self, created: float) -> str:
        """``created`` as ISO 8601 in UTC, with microseconds: ``2025-06-01T10:34:56.789012Z``."""
        second = int(created)
        cached, stamp = self._stamp
        if second != cached:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = (second, stamp)
        return f"{stamp}.{int((created - second) * 1e6):06d}Z"

    def format(self, record: logging.LogRecord) -> str:
        levelno = record.levelno
        level = _LEVEL_NAMES.get(levelno) or record.levelname.lower()
        parts = [
            '{"ts":"', self.timestamp(record.created),
            '","level":', _quote(level),
            ',"logger":', _quote(record.name),
            ',"event":', _quote(record.getMessage()),
        ]  # fmt: skip
        args = record.args
        fields = getattr(record, "fields", None)
        if not isinstance(fields, Mapping):
            fields = None
        if fields is not None and "task_id" in fields:
            parts += (',"task_id":', _safe_value(fields["task_id"]))
        elif (
            args
            and type(args) is tuple
            and type(args[0]) is int
            and isinstance(record.msg, str)
            and record.msg.startswith(TASK_PREFIX)
        ):
            parts += (',"task_id":', str(args[0]))
        if args:
            parts += (',"args":', _safe_value(args))
        if fields:
            parts += (',"fields":', _safe_value(fields))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts += (',"exc":', _quote(record.exc_text))
        if record.stack_info:
            parts += (',"stack":', _quote(self.formatStack(record.stack_info)))
        parts.append("}")
        if self.journal:
            parts[0] = _prefix(levelno) + parts[0]
        return "".join(parts)


class StderrHandler(logging.Handler):
    """One line per event on stderr (or ``fd``), written by a thread a few times a second.

    A write is a system call, and stderr may be slow or blocked: :meth:`emit` only formats the
    record and appends the line to a queue; the ``log-flush`` thread takes what waits and writes
    it in one call, every :attr:`INTERVAL` seconds while there are lines. Lines beyond
    :attr:`LIMIT` waiting (stderr blocked for long) are dropped, counted, and reported when it
    unblocks.

    The thread never takes the handler's lock (``logging.shutdown`` holds it to call
    :meth:`flush`): ``deque.append`` and ``popleft`` are atomic, and each counter of dropped
    lines has one writer.
    """

    INTERVAL = 0.2
    LIMIT = 100_000

    def __init__(self, fd: int | None = None) -> None:
        super().__init__()
        self.fd = sys.stderr.fileno() if fd is None else fd
        # Buffered: its write() goes on after a partial write (a pipe, a signal) until all is out.
        self._out = open(self.fd, "wb", closefd=False)  # noqa: SIM115
        self._lines: deque[str] = deque()
        self._dropped = 0  # lines dropped, ever (written by emit)
        self._reported = 0  # of those, said so (written by flush)
        self._closed = False
        self._wake = threading.Event()
        self._writing = threading.Lock()  # one writer at a time: the thread, flush() or close()
        self._thread = threading.Thread(target=self._flusher, name="log-flush", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if len(self._lines) < self.LIMIT:
            self._lines.append(line)
        else:
            self._dropped += 1
        if not self._wake.is_set():
            self._wake.set()

    def _flusher(self) -> None:
        while not self._closed:
            self._wake.wait()
            time.sleep(self.INTERVAL)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines now (blocks while stderr does: the loop never calls it)."""
        with self._writing:
            waiting, take = self._lines, self._lines.popleft
            lines = [take() for _ in range(len(waiting))]
            dropped = self._dropped - self._reported
            if dropped:
                self._reported += dropped
                note = logging.LogRecord(
                    "taskerd.logs", logging.WARNING, __file__, 0,
                    "%d log lines dropped: stderr was blocked", (dropped,), None,
                )  # fmt: skip
                try:
                    lines.append(self.format(note))
                except Exception:
                    lines.append(f"{dropped} log lines dropped: stderr was blocked")
            if not lines:
                return
            lines.append("")
            try:
                self._out.write("\n".join(lines).encode("utf-8", "backslashreplace"))
                self._out.flush()
            except (OSError, ValueError):
                pass  # stderr is gone: nowhere to say so

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()
        with self._writing, suppress(OSError):
            self._out.close()  # not the descriptor
        super().close()


def setup_logging(level: str, log_format: str = "text") -> None:
    """The daemon's log: ``level`` and up, on stderr, as ``log_format`` (``text`` or ``json``);
    with syslog priority prefixes when stderr is the journal."""
    # As the logging docs advise when speed matters: the lines name no source file, so the
    # logger need not walk the stack to find one, nor look up threads and processes.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = StderrHandler()
    journal = journal_stream(handler.fd)
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler.setFormatter(formatter(journal=journal))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.captureWarnings(True)  # warnings as log lines too, in the log's format
